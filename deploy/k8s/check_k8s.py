"""Validates deploy/k8s offline: core kinds with kubernetes-validate (strict), KEDA kinds
against the schemas kept in schemas/ (KEDA's CRDs are not in kubernetes-validate)."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

here = Path(__file__).parent
schemas = {
    "ScaledObject": json.loads((here / "schemas/keda-scaledobject.json").read_text()),
    "TriggerAuthentication": json.loads((here / "schemas/keda-triggerauthentication.json").read_text()),
}
files = sorted(here.glob("*.yaml"))
problems = []
core_docs = []
for f in files:
    for doc in yaml.safe_load_all(f.read_text()):
        if not doc:
            continue
        if doc.get("apiVersion", "").startswith("keda.sh/"):
            schema = schemas.get(doc.get("kind"))
            if schema is None:
                problems.append(f"{f.name}: no schema for KEDA kind {doc.get('kind')}")
                continue
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                problems.append(f"{f.name}: {doc['kind']}/{doc['metadata'].get('name')}: {e.message} at {list(e.absolute_path)}")
        else:
            core_docs.append(doc)
core = here.parent.parent / "target" / "k8s-core.yaml"
core.parent.mkdir(parents=True, exist_ok=True)
core.write_text(yaml.safe_dump_all(core_docs))
validator = Path(sys.executable).parent / "kubernetes-validate"
run = subprocess.run([str(validator), "--strict", "--quiet", "--no-warn", str(core)], capture_output=True, text=True)
if run.returncode != 0:
    problems.append(run.stdout + run.stderr)
# The workers need a grace period longer than their own shutdown bound.
for doc in core_docs:
    if doc["kind"] == "Deployment" and doc["metadata"]["name"] != "waconnect-ingress":
        grace = doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if grace < 30:
            problems.append(f"{doc['metadata']['name']}: terminationGracePeriodSeconds {grace} is too short for the lease hand-off")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"   {len(core_docs)} core objects and {sum(1 for f in files for d in yaml.safe_load_all(f.read_text()) if d and d['apiVersion'].startswith('keda.sh/'))} KEDA objects valid")
