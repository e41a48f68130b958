#!/usr/bin/env bash
# Regenerates tests/golden/online_retail_kmeans.json: runs the Online Retail pipeline, then
# scikit-learn's k-means on the same features (benches/reference/online_retail_kmeans.py),
# at the k segflow chose. Rerun it when pipelines/online_retail.yaml's features change.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
cache="${SEGFLOW_CACHE:-$HOME/.cache/segflow}"
venv="$cache/venv-bench"
# The target folder .ci/run uses: a fresh ./target would rebuild DataFusion (~30 min).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import numpy, sklearn, pyarrow" 2>/dev/null || "$venv/bin/pip" install -q numpy scikit-learn pyarrow
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo run --quiet -- run pipelines/online_retail.yaml --run-date 2011-12-10 --run-id golden --output-root "$out" >/dev/null
k="$("$venv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['k_choice']['chosen_k'])" "$out/models/segments/run_date=2011-12-10/model.json")"
"$venv/bin/python" "$here/reference/online_retail_kmeans.py" "$out/customer_features/run_date=2011-12-10" "$k" tests/golden/online_retail_kmeans.json
