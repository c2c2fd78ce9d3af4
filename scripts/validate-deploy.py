#!/usr/bin/env python3
"""Validates deploy/ offline: every Kubernetes resource against the Kubernetes JSON
schemas bundled with `kubernetes-validate` (strict: unknown fields are errors), every
kustomization's references exist, and every TOOLPLANE_* variable the manifests set is
one the binaries read. Exits non-zero on the first kind of problem found."""

import pathlib
import re
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
problems = []

code = "\n".join(p.read_text() for p in (ROOT / "crates").rglob("*.rs"))
known_env = set(re.findall(r'env = "([A-Z0-9_]+)"', code))

def toolplane_settings(docs):
    """TOOLPLANE_* names given to toolplane's own containers (not the example agent)."""
    names = set()
    for doc in docs:
        if doc.get("kind") == "ConfigMap":
            names |= set(doc.get("data", {}))
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            if "/toolplane/" in c.get("image", "") and "example-agent" not in c.get("image", ""):
                names |= {e["name"] for e in c.get("env", [])}
    return {n for n in names if n.startswith("TOOLPLANE_")}


# cert-manager's resources (the prod overlay's certificates) have no schema in
# kubernetes-validate: check the fields toolplane relies on, strictly.
CERT_MANAGER_SPEC = {
    "Certificate": {
        "required": {"secretName", "issuerRef"},
        "allowed": {"secretName", "issuerRef", "commonName", "dnsNames", "ipAddresses", "uris", "usages",
                    "duration", "renewBefore", "isCA", "privateKey", "subject", "secretTemplate"},
    },
    "Issuer": {"required": set(), "allowed": {"selfSigned", "ca", "acme", "vault", "venafi"}},
    "ClusterIssuer": {"required": set(), "allowed": {"selfSigned", "ca", "acme", "vault", "venafi"}},
}
USAGES = {"server auth", "client auth", "digital signature", "key encipherment", "cert sign"}


def cert_manager_problems(doc):
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    rules = CERT_MANAGER_SPEC.get(kind)
    if rules is None:
        return [f"unknown cert-manager kind {kind}"]
    found = [f"missing spec.{k}" for k in sorted(rules["required"] - set(spec))]
    found += [f"unknown field spec.{k}" for k in sorted(set(spec) - rules["allowed"])]
    if kind != "Certificate" and len(spec) != 1:
        found.append("an issuer needs exactly one of selfSigned, ca, acme, vault, venafi")
    if kind == "Certificate":
        if not (spec.get("issuerRef") or {}).get("name"):
            found.append("spec.issuerRef.name is required")
        found += [f"unknown usage {u!r}" for u in spec.get("usages", []) if u not in USAGES]
    if not (doc.get("metadata") or {}).get("name"):
        found.append("metadata.name is required")
    return found


checked = 0
for path in sorted(DEPLOY.rglob("*.yaml")):
    # Prometheus rules, not Kubernetes resources: scripts/validate-monitoring.py.
    if path.is_relative_to(DEPLOY / "monitoring"):
        continue
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if doc.get("kind") == "Kustomization":
            for ref in doc.get("resources", []) + [p["path"] for p in doc.get("patches", []) if "path" in p]:
                if not (path.parent / ref).exists():
                    problems.append(f"{path.relative_to(ROOT)}: references missing {ref}")
            continue
        if str(doc.get("apiVersion", "")).startswith("cert-manager.io/"):
            for p in cert_manager_problems(doc):
                problems.append(f"{path.relative_to(ROOT)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {p}")
            checked += 1
            continue
        try:
            kubernetes_validate.validate(doc, "1.30", strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{path.relative_to(ROOT)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {e.message} at {list(e.path)}")
    for name in sorted(toolplane_settings(docs)):
        if name not in known_env:
            problems.append(f"{path.relative_to(ROOT)}: sets {name}, which no binary reads")

for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"deploy/ valid: {checked} resources against Kubernetes 1.30 schemas (strict)")
