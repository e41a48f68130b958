#!/usr/bin/env bash
# Regenerates tests/golden/telco_churn_sklearn.json: runs the Telco pipeline, then
# scikit-learn's random forest with the same settings on the split segflow wrote out
# (benches/reference/telco_churn_sklearn.py), and prints both test ROC AUCs side by side.
# Rerun it when pipelines/telco_churn.yaml's features, split or forest settings change.
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
cargo run --quiet -- run pipelines/telco_churn.yaml --run-date 2026-11-24 --run-id golden --output-root "$out" >/dev/null
"$venv/bin/python" "$here/reference/telco_churn_sklearn.py" ../shared/data/telco_customer_churn/telco_customer_churn.parquet \
    "$out/churn_scores/run_date=2026-11-24" tests/golden/telco_churn_sklearn.json
"$venv/bin/python" - "$out/evaluation/run_date=2026-11-24" tests/golden/telco_churn_sklearn.json <<'PY'
import json, sys
import pyarrow.dataset as ds
rows = ds.dataset(sys.argv[1], format="parquet").to_table().to_pylist()
ours = next(r["value"] for r in rows if r["stage"] == "churn" and r["model"] == "random_forest" and r["split"] == "test" and r["metric"] == "roc_auc")
golden = json.load(open(sys.argv[2]))
print(f"test ROC AUC: segflow {ours:.4f}, scikit-learn {golden['test_roc_auc_mean']:.4f} (mean of {len(golden['seeds'])} seeds, std {golden['test_roc_auc_std']:.4f}); difference {ours - golden['test_roc_auc_mean']:+.4f}")
PY
