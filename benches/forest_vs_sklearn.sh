#!/usr/bin/env bash
# Side-by-side fit benchmark: segflow::ml::forest vs scikit-learn, on the same files.
#
#   benches/forest_vs_sklearn.sh            # forest (100 trees) and single tree
#   SEGFLOW_FOREST_BENCH_TREES=20 benches/forest_vs_sklearn.sh
#
# Data: make_classification(200k × 20, 10 informative, random_state=0), 150k train / 50k test,
# generated once into $SEGFLOW_CACHE/bench-data-forest. Each side runs under /usr/bin/time -v for
# peak RSS. Forest: full depth, sqrt features, bootstrap, n_jobs=-1 (sklearn) / all rayon threads
# (ours). Prints fit seconds, test ROC AUC, peak RSS for both and the ratios.
# The machine is small and shared: compare the ratios of one run, not absolute seconds.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SEGFLOW_CACHE:-$HOME/.cache/segflow}"
venv="$cache/venv-bench"
data="$cache/bench-data-forest"
n_trees="${SEGFLOW_FOREST_BENCH_TREES:-100}"
# Our side; must accept: --data DIR --model forest|tree --trees N.
bench_cmd="${SEGFLOW_FOREST_BENCH_CMD:-cargo bench --quiet -p segflow-ml --bench forest_fit --}"
reference="$repo_root/benches/reference/forest_sklearn.py"

if [[ ! -x /usr/bin/time ]]; then
    apt-get update -qq && apt-get install -y -qq time >/dev/null
fi
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import numpy, sklearn" 2>/dev/null || "$venv/bin/pip" install -q numpy scikit-learn
if [[ ! -f "$data/shape.txt" ]]; then
    "$venv/bin/python" "$reference" generate "$data"
fi

cd "$repo_root"
if [[ -z "${SEGFLOW_FOREST_BENCH_CMD:-}" ]]; then
    # Build first so compile time is not measured.
    cargo bench --no-run --quiet -p segflow-ml --bench forest_fit
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# run NAME CMD...: stdout key=value lines to $work/NAME.out, time -v report to $work/NAME.time
run() {
    local name="$1"
    shift
    /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.out"
}
value() { grep -m1 "^$2=" "$work/$1.out" | cut -d= -f2; }
peak_mib() { awk -F: '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$work/$1.time"; }

compare() {
    local model="$1"
    echo "== $model (train 150000 x 20, test 50000) =="
    run "sk_$model" "$venv/bin/python" "$reference" fit "$data" "$model" "$n_trees"
    # shellcheck disable=SC2086 # bench_cmd is a command line
    run "rs_$model" $bench_cmd --data "$data" --model "$model" --trees "$n_trees"
    local sk_fit rs_fit sk_auc rs_auc sk_rss rs_rss
    sk_fit="$(value "sk_$model" fit_seconds)"
    rs_fit="$(value "rs_$model" fit_seconds)"
    sk_auc="$(value "sk_$model" test_auc)"
    rs_auc="$(value "rs_$model" test_auc)"
    sk_rss="$(peak_mib "sk_$model")"
    rs_rss="$(peak_mib "rs_$model")"
    printf '%-14s %12s %12s %14s\n' "" "fit_s" "test_auc" "peak_rss_MiB"
    printf '%-14s %12s %12s %14s\n' "scikit-learn" "$sk_fit" "$sk_auc" "$sk_rss"
    printf '%-14s %12s %12s %14s\n' "segflow" "$rs_fit" "$rs_auc" "$rs_rss"
    awk -v sf="$sk_fit" -v rf="$rs_fit" -v sa="$sk_auc" -v ra="$rs_auc" -v sm="$sk_rss" -v rm="$rs_rss" 'BEGIN {
        printf "speedup (sklearn fit / ours)  %.2fx  (target >= 4x)\n", sf / rf
        printf "auc difference (ours - sk)    %+.4f  (target >= -0.003)\n", ra - sa
        printf "peak rss ratio (ours / sk)    %.2f   (target <= 1)\n", rm / sm
    }'
    echo
}

compare forest
compare tree
