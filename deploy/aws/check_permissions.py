"""Every DynamoDB operation the services' code calls is granted to the task roles that run
it: moto does not enforce IAM, so a missing action would first show in production.

The relay-worker and the outbound-sender both open every storage engine (conversation
store, delivery ledger, message index, roster, failure log), so both roles need every
DynamoDB action found in shared/, relay-worker/ and outbound-sender/.
"""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy/aws/waconnect.yaml"
SOURCES = ["shared/src", "relay-worker/src", "outbound-sender/src"]
ROLES = ["RelayTaskRole", "SenderTaskRole"]
# The SDK's fluent builders, as called on a DynamoDB client: `.get_item()` and so on.
CALL = re.compile(
    r"\.(get_item|put_item|update_item|delete_item|query|scan|batch_get_item|"
    r"batch_write_item|transact_write_items|transact_get_items)\(\)"
)


def action(call: str) -> str:
    return "dynamodb:" + "".join(word.capitalize() for word in call.split("_"))


def used() -> dict[str, set[str]]:
    """DynamoDB actions → the files that call them (files that use the DynamoDB SDK)."""
    found: dict[str, set[str]] = {}
    for source in SOURCES:
        for path in (ROOT / source).rglob("*.rs"):
            text = path.read_text()
            if "dynamodb" not in text and "table.client" not in text:
                continue
            for call in CALL.findall(text):
                found.setdefault(action(call), set()).add(str(path.relative_to(ROOT)))
    return found


def granted(template: dict, role: str) -> set[str]:
    actions: set[str] = set()
    for policy in template["Resources"][role]["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement.get("Effect") != "Allow":
                continue
            listed = statement["Action"]
            actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def main() -> int:
    template = yaml.safe_load(TEMPLATE.read_text())
    needed = used()
    if not needed:
        print("found no DynamoDB calls: the scan is broken", file=sys.stderr)
        return 1
    missing = [
        f"{role} lacks {a} (called in {', '.join(sorted(needed[a]))})"
        for role in ROLES
        for a in sorted(needed)
        if a not in granted(template, role)
    ]
    for m in missing:
        print(m, file=sys.stderr)
    if not missing:
        print(f"   {len(needed)} DynamoDB actions, granted to {', '.join(ROLES)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
