#!/usr/bin/env bash
# End to end, side by side in one run: segflow's pipeline and a Python reference pipeline
# doing the same stages (benches/reference/pipeline.py: polars cleans and deduplicates, DuckDB
# computes the features, scikit-learn segments and predicts churn with the same settings).
#
#   benches/compare.sh                      # Online Retail, then generated 1M and 10M lines
#   benches/compare.sh online_retail 1m     # any of: online_retail 1m 10m 100m
#   SEGFLOW_REFERENCE_100M=1 benches/compare.sh 100m   # also run the Python side at 100M
#   SEGFLOW_MAX_SAMPLES=0.1 benches/compare.sh 100m     # each tree draws 10% of the training
#                                                       # customers (both sides); README, 100M
#
# For each data set it prints per-stage and total wall time, peak RSS (/usr/bin/time -v) and
# model quality (chosen k, inertia, test ROC AUC) for both, and the ratios; the table also goes
# to $SEGFLOW_CACHE/compare/results.md. At 100M the Python side is skipped unless asked for
# (pandas-free as it is, its k-means and forest on 2.6M customers take the better part of an
# hour here); segflow runs with a 2 GiB engine memory limit, so its SQL stages spill.
#
# SEGFLOW_BIN picks the binary (default: `cargo build --release`). Generated data and the venv
# are cached under ${SEGFLOW_CACHE:-$HOME/.cache/segflow}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${SEGFLOW_CACHE:-$HOME/.cache/segflow}
work=$cache/compare
mkdir -p "$work"
sets=("$@")
[ ${#sets[@]} -eq 0 ] && sets=(online_retail 1m 10m)

if [ -z "${SEGFLOW_BIN:-}" ]; then
    (cd "$repo" && cargo build --release --quiet)
    SEGFLOW_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/segflow
fi
venv=$cache/venv-reference
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/reference/requirements.txt" "$venv/requirements.txt"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/reference/requirements.txt"
    cp "$here/reference/requirements.txt" "$venv/requirements.txt"
fi
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

# Transaction lines per generated customer: the demo generator writes about 38.
customers_for() {
    case $1 in
        1m) echo 26300 ;;
        10m) echo 263000 ;;
        100m) echo 2630000 ;;
        *) echo "unknown data set $1 (online_retail, 1m, 10m, 100m)" >&2; exit 2 ;;
    esac
}

# Runs "$@" under /usr/bin/time -v; prints nothing, leaves the time report in $1.time.
timed() {
    local report=$1
    shift
    /usr/bin/time -v -o "$report" "$@"
}

summary=$work/results.md
{
    echo "# segflow vs the Python reference, $(date -u +%Y-%m-%d)"
    echo
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $("$SEGFLOW_BIN" --version); $("$venv/bin/python" --version)"
    echo
} > "$summary"

for set in "${sets[@]}"; do
    out=$work/$set
    rm -rf "$out/segflow" "$out/reference"
    mkdir -p "$out"
    if [ "$set" = online_retail ]; then
        pipeline=$repo/pipelines/online_retail.yaml
        run_date=2011-12-10
        reference_args=(online_retail --data "$repo/../shared/data/online_retail/online_retail.parquet")
        engine_args=()
    else
        data=$cache/compare-data/$set
        if [ ! -f "$data/.complete" ]; then
            echo "compare: generating $set transaction lines in $data" >&2
            rm -rf "$data"
            "$SEGFLOW_BIN" demo-data "$data" --customers "$(customers_for "$set")" --seed 7 2>/dev/null
            touch "$data/.complete"
        fi
        # The demo pipeline over the generated folder (paths made absolute).
        pipeline=$out/demo.yaml
        sed -e "s#\.\./data/demo#$data#" -e "s#\.\./sql/#$repo/sql/#" "$repo/pipelines/demo.yaml" > "$pipeline"
        if [ -n "${SEGFLOW_MAX_SAMPLES:-}" ]; then
            sed -i "s#oob_score: true }#oob_score: true, max_samples: $SEGFLOW_MAX_SAMPLES }#" "$pipeline"
            grep -q "max_samples: $SEGFLOW_MAX_SAMPLES" "$pipeline" || { echo "compare: cannot set max_samples in $pipeline" >&2; exit 2; }
        fi
        run_date=2025-01-01
        reference_args=(demo --data "$data")
        [ -n "${SEGFLOW_MAX_SAMPLES:-}" ] && reference_args+=(--max-samples "$SEGFLOW_MAX_SAMPLES")
        engine_args=()
        [ "$set" = 100m ] && engine_args=(--memory-limit 2GiB)
    fi

    echo "compare: $set — segflow" >&2
    timed "$out/segflow.time" "$SEGFLOW_BIN" run "$pipeline" --run-date "$run_date" --run-id compare \
        --output-root "$out/segflow" "${engine_args[@]}" > "$out/segflow.json" 2> "$out/segflow.log"

    if [ "$set" != 100m ] || [ -n "${SEGFLOW_REFERENCE_100M:-}" ]; then
        echo "compare: $set — Python reference" >&2
        timed "$out/reference.time" "$venv/bin/python" "$here/reference/pipeline.py" "${reference_args[@]}" \
            --out "$out/reference" --json "$out/reference.json" > "$out/reference.log" 2>&1
    else
        rm -f "$out/reference.time" "$out/reference.json"
    fi

    "$venv/bin/python" "$here/reference/compare_report.py" "$set" "$out" | tee -a "$summary"
done
echo "compare: results in $summary" >&2
