"""Every PromQL expression in the dashboard and the alert rules parses, and every metric it
names is one the services export: in shared/src/service/catalog.rs (whose own test proves the code
records exactly those names) or seen in the .prom files the end-to-end test wrote."""

import json
import re
import sys

import promql_parser
import yaml

dashboard, rules, catalog, *exposition = sys.argv[1:]

exported = set()
for name, kind in re.findall(r'"(waconnect_[a-z_]+)",\s*Kind::(\w+)', open(catalog).read()):
    exported.add(name)
    if kind == "Histogram":
        exported.update(name + s for s in ("_bucket", "_sum", "_count"))
for path in exposition:
    for line in open(path):
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported.update(name + s for s in ("_bucket", "_sum", "_count"))

exprs = []
for panel in json.load(open(dashboard))["panels"]:
    for target in panel.get("targets", []):
        exprs.append((f"panel {panel['title']!r}", target["expr"]))
for group in yaml.safe_load(open(rules))["groups"]:
    for rule in group["rules"]:
        exprs.append((f"alert {rule['alert']}", rule["expr"]))

problems = []
for where, expr in exprs:
    try:
        promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError subclasses
        problems.append(f"{where}: does not parse: {e}")
        continue
    for name in set(re.findall(r"\bwaconnect_[a-z_]+\b", expr)):
        if name not in exported:
            problems.append(f"{where}: {name} is not exported by any service")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"   {len(exprs)} expressions parse and use {len(exported)} exported series names")
