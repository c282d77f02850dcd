#!/usr/bin/env bash
# Checks the monitoring artifacts under deploy/:
#   deploy/prometheus/prometheus.yml   promtool check config (also loads alerts.yml)
#   deploy/prometheus/alerts.yml       promtool check rules
#   deploy/prometheus/alerts_test.yml  promtool test rules (alert unit tests)
#   deploy/grafana/wmserve-dashboard.json
#                                      parses as JSON, uses the ${datasource} variable, and every
#                                      PromQL expression in it parses (checked with promtool as a
#                                      recording rule, with Grafana's $__ variables substituted)
# Usage: check_prometheus_artifacts.sh [SOURCE_DIR]   (ctest: deploy.prometheus_artifacts)
# Exits non-zero on the first failure.
set -euo pipefail

src="${1:-$(cd "$(dirname "$0")/../.." && pwd)}"
promtool="${PROMTOOL:-/usr/bin/promtool}"
python="${PYTHON:-/usr/bin/python3}"
prom_dir="$src/deploy/prometheus"
dashboard="$src/deploy/grafana/wmserve-dashboard.json"

fail() { echo "FAIL: $*" >&2; exit 1; }

[[ -x "$promtool" ]] || fail "$promtool not found (Debian package prometheus; deploy/install-deps.sh installs it)"
[[ -x "$python" ]] || fail "$python not found"
for f in "$prom_dir/prometheus.yml" "$prom_dir/alerts.yml" "$prom_dir/alerts_test.yml" "$dashboard"; do
  [[ -f "$f" ]] || fail "missing $f"
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== promtool check config $prom_dir/prometheus.yml"
"$promtool" check config "$prom_dir/prometheus.yml" || fail "promtool check config"

echo "== promtool check rules $prom_dir/alerts.yml"
"$promtool" check rules "$prom_dir/alerts.yml" || fail "promtool check rules"

echo "== promtool test rules $prom_dir/alerts_test.yml"
(cd "$prom_dir" && "$promtool" test rules alerts_test.yml) || fail "promtool test rules"

echo "== json.tool $dashboard"
"$python" -m json.tool "$dashboard" >/dev/null || fail "dashboard is not valid JSON"

echo "== dashboard structure and PromQL"
"$python" - "$dashboard" "$tmp/dashboard_rules.yml" <<'PY' || fail "dashboard checks"
import json, sys

path, rules_out = sys.argv[1], sys.argv[2]
with open(path) as f:
    dash = json.load(f)
errors = []
if not 36 <= dash.get("schemaVersion", 0) <= 39:
    errors.append(f"schemaVersion {dash.get('schemaVersion')} (want ~38)")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append("no `datasource` template variable of type datasource/prometheus")

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

exprs = []
ids = set()
for p in panels(dash.get("panels", [])):
    if p.get("id") in ids:
        errors.append(f"duplicate panel id {p.get('id')}")
    ids.add(p.get("id"))
    if p.get("type") == "row":
        continue
    title = p.get("title", "?")
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"panel {title!r}: datasource is not ${{datasource}}")
    if not p.get("targets"):
        errors.append(f"panel {title!r}: no queries")
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        if not expr:
            errors.append(f"panel {title!r} {t.get('refId')}: empty expr")
            continue
        exprs.append((title, t.get("refId"), expr))

# Each expression as a recording rule, so `promtool check rules` parses the PromQL.
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
with open(rules_out, "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, ref, expr) in enumerate(exprs):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            errors.append(f"panel {title!r} {ref}: unknown variable in {expr!r}")
        out.write(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(expr)}\n")
for e in errors:
    print("dashboard:", e, file=sys.stderr)
print(f"{len(exprs)} queries in {len(ids)} panels")
sys.exit(1 if errors else 0)
PY
"$promtool" check rules "$tmp/dashboard_rules.yml" || fail "a dashboard query does not parse"

echo "OK: prometheus.yml, alerts.yml, alerts_test.yml, wmserve-dashboard.json"
