#!/usr/bin/env bash
# Checks docs/monitoring/: the Prometheus alerting rules (promtool check rules), their unit tests
# (promtool test rules), and the Grafana dashboard (valid JSON, every panel with a query, every
# query valid PromQL); every botmanager metric the rules and the dashboard read must be defined by
# the code (or be in NOT_YET_EXPOSED of tests/observability/test_monitoring.py, the one list of
# names another change is adding). Installs Debian's
# `prometheus` package, which ships promtool, when promtool is missing.
# tests/observability/test_monitoring.py checks the same names against a real /metrics scrape.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=docs/monitoring
if ! command -v promtool >/dev/null 2>&1; then
    echo "check-monitoring: installing promtool (Debian's prometheus package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules "$dir/botmanager-alerts.yml"
(cd "$dir" && promtool test rules botmanager-alerts.test.yml)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The dashboard's queries as recording rules, so that promtool parses each one.
python3 - "$dir/botmanager-dashboard.json" "$work/dashboard-queries.yml" "$dir/botmanager-alerts.yml" <<'PY'
import ast
import json
import pathlib
import re
import sys

dashboard = json.loads(pathlib.Path(sys.argv[1]).read_text())
problems, queries = [], []
ids = [p.get("id") for p in dashboard.get("panels", [])]
if len(ids) != len(set(ids)):
    problems.append("panel ids are not unique")
for panel in dashboard.get("panels", []):
    if panel.get("type") == "row":
        continue
    targets = panel.get("targets") or []
    if not targets or not all(t.get("expr") for t in targets):
        problems.append(f"panel {panel.get('title')!r} has no query")
    queries += [t["expr"] for t in targets if t.get("expr")]
# Names the code defines: counters are exposed with _total, histograms with _bucket/_sum/_count.
source = "\n".join(p.read_text() for d in ("observability", "meetings", "webhooks") if pathlib.Path(d).is_dir()
                   for p in pathlib.Path(d).rglob("*.py"))
defined = set(re.findall(r"[\"'](botmanager_[a-z0-9_]+)[\"']", source))
tests = ast.parse(pathlib.Path("tests/observability/test_monitoring.py").read_text())
defined |= next(ast.literal_eval(node.value) for node in ast.walk(tests) if isinstance(node, ast.Assign)
                and getattr(node.targets[0], "id", "") == "NOT_YET_EXPOSED")
for where, text in (("botmanager-dashboard.json", "\n".join(queries)),
                    ("botmanager-alerts.yml", pathlib.Path(sys.argv[3]).read_text())):
    for name in sorted(set(re.findall(r"\bbotmanager_[a-z0-9_]+", text))):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        if name not in defined and base not in defined:
            problems.append(f"{where}: {name} is not a metric the code defines")
if problems:
    sys.exit("check-monitoring:\n  " + "\n  ".join(problems))
rules = [f"      - record: dashboard_query_{n}\n        expr: {json.dumps(q.replace('$__rate_interval', '5m'))}"
         for n, q in enumerate(queries)]
pathlib.Path(sys.argv[2]).write_text("groups:\n  - name: dashboard\n    rules:\n" + "\n".join(rules) + "\n")
print(f"check-monitoring: dashboard: {len(queries)} queries, every metric defined")
PY
promtool check rules "$work/dashboard-queries.yml" >/dev/null
echo "check-monitoring: rules, rule tests and dashboard are valid ($(promtool --version 2>&1 | head -1))"
