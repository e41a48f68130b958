#!/usr/bin/env bash
# Clean + dedup on generated transaction lines, segflow side by side with polars (Python),
# same file, same operations, one run. Prints both wall times, peak RSS and the ratios.
#
#   benches/clean_vs_polars.sh [CUSTOMERS]        # default 270000 customers ≈ 10M lines
#
# SEGFLOW_BIN picks the binary (default: a `cargo build --release` one). The polars side runs
# in a venv made here under ${SEGFLOW_CACHE:-$HOME/.cache/segflow}/venv-polars.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
customers=${1:-270000}
cache=${SEGFLOW_CACHE:-$HOME/.cache/segflow}
work=$cache/bench-clean-$customers
mkdir -p "$work"

if [ -z "${SEGFLOW_BIN:-}" ]; then
    (cd "$repo" && cargo build --release --quiet)
    SEGFLOW_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/segflow
fi
if [ ! -d "$cache/venv-polars" ]; then
    python3 -m venv "$cache/venv-polars"
    "$cache/venv-polars/bin/pip" install --quiet polars
fi
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

if [ ! -d "$work/data/transactions" ]; then
    "$SEGFLOW_BIN" demo-data "$work/data" --customers "$customers" --seed 7 2>/dev/null
fi
# The same stage the criterion bench runs (benches/engine/benches/clean_dedup.rs).
cp "$here/clean_bench.yaml" "$work/clean.yaml"

measure() { # label, command...
    local label=$1; shift
    local log=$work/$label.time
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -v "$@" > "$work/$label.out" 2> "$log"
    end=$(date +%s.%N)
    local rss
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    echo "$label $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') $rss"
}

rows=$(find "$work/data/transactions" -name '*.parquet' -exec "$cache/venv-polars/bin/python" -c 'import sys, polars as pl; print(sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in sys.argv[1:]))' {} +)
echo "clean + dedup on $rows generated lines ($customers customers), $(nproc) cores, $(date -u +%Y-%m-%d)"
seg=$(cd "$work" && measure segflow "$SEGFLOW_BIN" run clean.yaml --run-id bench)
pol=$(cd "$work" && measure polars "$cache/venv-polars/bin/python" "$here/reference/clean_polars.py" data/transactions out-polars)
grep -h '"rows_in"\|accounted' "$work/segflow.time" | tail -1 || true
cat "$work/polars.out"
read -r _ seg_s seg_kb <<<"$seg"
read -r _ pol_s pol_kb <<<"$pol"
printf '%-8s %8s s %8s MiB\n' segflow "$seg_s" "$((seg_kb / 1024))" polars "$pol_s" "$((pol_kb / 1024))"
awk -v a="$seg_s" -v b="$pol_s" -v c="$seg_kb" -v d="$pol_kb" \
    'BEGIN { printf "wall time segflow/polars: %.2f (throughput %.2fx)   peak RSS segflow/polars: %.2f\n", a / b, b / a, c / d }'
