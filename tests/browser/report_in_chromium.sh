#!/usr/bin/env bash
# The HTML report, looked at as a person would: Debian's Chromium loads the demo run's
# report.html headless, takes a screenshot (into docs/report-demo.png with
# SEGFLOW_UPDATE_SCREENSHOT=1), and a copy of the page with
# a measuring script added reports every chart's laid-out size through the DOM. Fails when a
# chart is missing or has no size. The report itself has no script; only the copy does.
#
#   tests/browser/report_in_chromium.sh [SEGFLOW_BINARY]
#
# Installs chromium with apt-get when it is missing (needs root). Exit 3 when it cannot be
# installed, so .ci/run can tell "not checked" from "checked and wrong".
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
segflow="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/segflow/target}/debug/segflow}"
chromium="$(command -v chromium || true)"
if [[ -z "$chromium" ]]; then
    echo "report test: installing Debian's chromium" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
        echo "report test: cannot install chromium" >&2
        exit 3
    fi
    chromium="$(command -v chromium)"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Two run dates, so the migration matrix has something to show.
for date in 2025-01-01 2025-02-01; do
    "$segflow" run "$repo/pipelines/demo.yaml" --run-date "$date" --output-root "$work/out" >/dev/null 2>"$work/run.log" || { cat "$work/run.log" >&2; exit 1; }
done
report="$work/out/reports/run_date=2025-02-01/report.html"

browse() {
    timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$work/profile-$1" "${@:2}" 2>>"$work/chromium.log"
}

browse shot --hide-scrollbars --window-size=1280,7000 --screenshot="$work/report.png" "file://$report" >/dev/null
test -s "$work/report.png" || { echo "report test: chromium took no screenshot" >&2; exit 1; }
# The repository's copy is replaced only on request, so a CI run leaves the checkout clean.
if [[ "${SEGFLOW_UPDATE_SCREENSHOT:-}" == 1 ]]; then
    mkdir -p "$repo/docs"
    cp "$work/report.png" "$repo/docs/report-demo.png"
fi

# The copy with a measuring script: each chart's id and size into a <pre> the DOM dump shows.
sed 's#</body>#<script>document.body.insertAdjacentHTML("beforeend","<pre id=\\"segflow-sizes\\">"+JSON.stringify([...document.querySelectorAll("figure.chart")].map(f=>{const s=f.querySelector("svg"),r=s?s.getBoundingClientRect():{width:0,height:0};return {id:f.id,width:r.width,height:r.height}}))+"</pre>")</script></body>#' "$report" >"$work/measured.html"
browse dom --virtual-time-budget=2000 --dump-dom "file://$work/measured.html" >"$work/dom.html"

python3 - "$work/dom.html" <<'PY'
import html, json, re, sys
dom = open(sys.argv[1]).read()
found = re.search(r'<pre id="segflow-sizes">(.*?)</pre>', dom, re.S)
if not found:
    sys.exit("report test: the measuring script did not run (no sizes in the DOM)")
charts = {c["id"]: c for c in json.loads(html.unescape(found.group(1)))}
expected = ["data-quality-transactions", "k-curve-segments", "silhouette-segments", "segment-sizes-segments", "centroids-segments",
            "migration-segments", "roc-churn", "pr-churn", "lift-churn", "gains-churn", "calibration-churn", "importance-churn",
            "confusion-churn", "churn-by-segment-churn"]
problems = [f"{c}: missing" for c in expected if c not in charts]
problems += [f"{c['id']}: laid out {c['width']}x{c['height']}" for c in charts.values() if not (c["width"] > 0 and c["height"] > 0)]
for c in sorted(charts.values(), key=lambda c: c["id"]):
    print(f"  {c['id']:28} {c['width']:.0f}x{c['height']:.0f}")
if problems:
    sys.exit("report test: " + "; ".join(problems))
print(f"report test: {len(charts)} charts laid out and a screenshot taken")
PY
