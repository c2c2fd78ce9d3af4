#!/usr/bin/env python3
"""Validates deploy/monitoring offline, as `promtool check rules` would and a little
more (promtool is not on any registry this project installs from):

- the alert rule file has Prometheus's rule-file shape (groups, unique names, known
  keys, `for` durations, a severity label, summary and description annotations);
- every rule's `expr` and every Grafana panel's query parses as PromQL (the
  `promql-parser` package, a binding of the Rust parser Prometheus-compatible servers
  use), with Grafana's `$variables` stood in for;
- every `toolplane_*` metric they read is one the binaries export (the names in
  crates/runtime/src/metrics.rs), and the rules cover what operators need: per-RPC
  errors, dead letters, sidecar lag, the database pool, sync sessions, spool depth;
- every `TOOLPLANE_*` setting they mention is one the binaries read.

If a `promtool` is on PATH it is run as well. Exits non-zero when anything is wrong."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import promql_parser
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "toolplane-alerts.yaml"
DASHBOARD = MONITORING / "toolplane-dashboard.json"
problems = []

metrics_rs = (ROOT / "crates" / "runtime" / "src" / "metrics.rs").read_text()
exported = set()
for name in re.findall(r'pub const [A-Z_]+: &str = "(toolplane_[a-z0-9_]+)";', metrics_rs):
    exported.add(name)
    if name.endswith("_seconds"):  # histograms (every *_seconds metric may be one)
        exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
code = "\n".join(p.read_text() for p in (ROOT / "crates").rglob("*.rs"))
known_env = set(re.findall(r'env = "([A-Z0-9_]+)"', code))

# What the rules must watch (issue 23: "the fleet is observable").
REQUIRED = {
    "per-RPC error ratio": {"toolplane_grpc_server_handled_total"},
    "dead letters": {"toolplane_sync_events_dead_lettered_total"},
    "sidecar snapshot lag": {"toolplane_sidecar_snapshot_revision_lag", "toolplane_sidecar_last_push_age_seconds"},
    "database pool exhausted": {"toolplane_db_pool_available_connections", "toolplane_db_pool_waiting_requests"},
    "sync sessions": {"toolplane_sync_sessions"},
    "spool depth": {"toolplane_spool_depth"},
}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RECORD_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def selectors(expr):
    """The metric names an expression reads."""
    names = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.append(node.name)

    promql_parser.walk(expr, visit)
    return names


def check_query(where, text):
    """Parses `text`; returns the metric names it reads."""
    try:
        expr = promql_parser.parse(text)
    except ValueError as e:
        problems.append(f"{where}: does not parse as PromQL: {e}")
        return []
    names = selectors(expr)
    if not names:
        problems.append(f"{where}: reads no series (a constant expression)")
    for name in names:
        if name and name.startswith("toolplane_") and name not in exported:
            problems.append(f"{where}: reads {name}, which no binary exports")
    return names


def check_settings(where, text):
    for name in sorted(set(re.findall(r"\bTOOLPLANE_[A-Z0-9_]+\b", text))):
        if name not in known_env:
            problems.append(f"{where}: mentions {name}, which no binary reads")


def check_templates(where, text):
    if text.count("{{") != text.count("}}"):
        problems.append(f"{where}: unbalanced {{{{ }}}} template")


# The rule file.
rules_text = RULES.read_text()
check_settings(RULES.name, rules_text)
doc = yaml.safe_load(rules_text)
alert_reads = set()
rule_count = 0
if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list):
    problems.append(f"{RULES.name}: must be a mapping with only `groups`, a list")
    doc = {"groups": []}
group_names, alert_names = set(), set()
for g in doc["groups"]:
    gname = g.get("name")
    if not gname or gname in group_names:
        problems.append(f"{RULES.name}: group without a name or named twice: {gname!r}")
    group_names.add(gname)
    unknown = set(g) - {"name", "interval", "rules", "limit", "query_offset", "labels"}
    if unknown:
        problems.append(f"{RULES.name}: group {gname}: unknown keys {sorted(unknown)}")
    if "interval" in g:
        try:
            promql_parser.parse_duration(g["interval"])
        except ValueError as e:
            problems.append(f"{RULES.name}: group {gname}: interval: {e}")
    if not g.get("rules"):
        problems.append(f"{RULES.name}: group {gname} has no rules")
    for i, r in enumerate(g.get("rules") or []):
        rule_count += 1
        where = f"{RULES.name}: {gname}[{i}] {r.get('alert') or r.get('record')}"
        unknown = set(r) - RULE_KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        if ("alert" in r) == ("record" in r):
            problems.append(f"{where}: needs exactly one of `alert` and `record`")
            continue
        if not isinstance(r.get("expr"), str) or not r["expr"].strip():
            problems.append(f"{where}: `expr` must be a non-empty string")
            continue
        names = check_query(where, r["expr"])
        for key in ("for", "keep_firing_for"):
            if key in r:
                try:
                    promql_parser.parse_duration(str(r[key]))
                except ValueError as e:
                    problems.append(f"{where}: {key}: {e}")
        for key in ("labels", "annotations"):
            for k, v in (r.get(key) or {}).items():
                if not NAME.match(str(k)) or not isinstance(v, str):
                    problems.append(f"{where}: {key}.{k} must be a label name with a string value")
                elif "$value" in v or "$labels" in v:
                    check_templates(f"{where}: {key}.{k}", v)
        if "record" in r:
            if not RECORD_NAME.match(r["record"]):
                problems.append(f"{where}: invalid recording rule name")
            if "for" in r or "annotations" in r:
                problems.append(f"{where}: a recording rule has no `for` or annotations")
            continue
        if not NAME.match(r["alert"]) or r["alert"] in alert_names:
            problems.append(f"{where}: invalid or duplicate alert name")
        alert_names.add(r["alert"])
        if (r.get("labels") or {}).get("severity") not in {"warning", "critical"}:
            problems.append(f"{where}: labels.severity must be warning or critical")
        for a in ("summary", "description"):
            if not (r.get("annotations") or {}).get(a):
                problems.append(f"{where}: annotations.{a} is required")
        alert_reads |= set(names)
for what, needed in REQUIRED.items():
    missing = needed - alert_reads
    if missing:
        problems.append(f"{RULES.name}: no alert on {what} (reads none of {sorted(missing)})")

# The Grafana dashboard.
dash_text = DASHBOARD.read_text()
check_settings(DASHBOARD.name, dash_text)
dash = json.loads(dash_text)
GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)\b")
GRAFANA_VARS = re.compile(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?")


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels") or [])


query_count, ids = 0, set()
for p in panels(dash.get("panels") or []):
    if p.get("id") in ids:
        problems.append(f"{DASHBOARD.name}: panel id {p.get('id')} used twice")
    ids.add(p.get("id"))
    for t in p.get("targets") or []:
        query_count += 1
        text = GRAFANA_VARS.sub("x", GRAFANA_RANGES.sub("5m", t.get("expr", "")))
        check_query(f"{DASHBOARD.name}: {p.get('title')} {t.get('refId')}", text)
for v in (dash.get("templating") or {}).get("list", []):
    q = v.get("definition") or ""
    m = re.match(r"label_values\((\w+),\s*\w+\)$", q)
    if v.get("type") == "query" and (not m or m.group(1) not in exported):
        problems.append(f"{DASHBOARD.name}: variable {v.get('name')}: {q!r} reads no exported metric")
if query_count == 0:
    problems.append(f"{DASHBOARD.name}: no panel queries")

promtool = shutil.which("promtool")
if promtool:
    run = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    if run.returncode != 0:
        problems.append(f"promtool check rules: {run.stdout}{run.stderr}")

for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(
    f"deploy/monitoring valid: {rule_count} rules in {len(group_names)} groups, "
    f"{query_count} dashboard queries{' (and promtool)' if promtool else ''}"
)
