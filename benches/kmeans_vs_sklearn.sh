#!/usr/bin/env bash
# Side-by-side benchmark of one Lloyd iteration: scikit-learn vs segflow::ml::kmeans, on the
# same deterministic 1M x 8 data set, from the same k-means++ initial centres (k = 8), for the
# same number of iterations, in one run. Prints ms per iteration for both, the ratio, and both
# final inertias with their relative difference.
#
# Environment:
#   SEGFLOW_CACHE              cache root (default ~/.cache/segflow): venv and data live there
#   SEGFLOW_KMEANS_BENCH_CMD   how to run our side; the data directory and options are
#                              appended (default: cargo bench -p segflow-ml --bench kmeans_iteration --)
#   KMEANS_BENCH_ITERS         Lloyd iterations per timed fit (default 20; must stay below
#                              the 48 at which Lloyd converges on this data)
#   KMEANS_BENCH_REPEATS       timed fits per side (default 5; the median is reported)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SEGFLOW_CACHE:-$HOME/.cache/segflow}"
venv="$cache/venv-bench"
data="$cache/kmeans-bench-data"
iters="${KMEANS_BENCH_ITERS:-20}"
repeats="${KMEANS_BENCH_REPEATS:-5}"
rust_cmd="${SEGFLOW_KMEANS_BENCH_CMD:-cargo bench --quiet -p segflow-ml --bench kmeans_iteration --}"
reference="$here/reference/kmeans_sklearn.py"
cd "$here/.."   # cargo runs from the repository

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet numpy scikit-learn
fi
if [[ ! -f "$data/x.f64" || ! -f "$data/init.f64" ]]; then
    "$venv/bin/python" "$reference" generate "$data" >&2
fi

echo "== scikit-learn ($iters iterations, $repeats repeats)" >&2
sklearn_out="$("$venv/bin/python" "$reference" run "$data" --iters "$iters" --repeats "$repeats")"
echo "$sklearn_out"
echo "== segflow: $rust_cmd $data --iters $iters --repeats $repeats" >&2
# shellcheck disable=SC2086 # the command is meant to split into words
rust_out="$($rust_cmd "$data" --iters "$iters" --repeats "$repeats")"
echo "$rust_out"

value() { sed -n "s/^$1=//p" <<<"$2" | tail -n 1; }
"$venv/bin/python" - "$(value sklearn_ms_per_iter "$sklearn_out")" "$(value rust_ms_per_iter "$rust_out")" \
    "$(value sklearn_inertia "$sklearn_out")" "$(value rust_inertia "$rust_out")" \
    "$(value sklearn_threads "$sklearn_out")" "$(value rust_threads "$rust_out")" \
    "$(value sklearn_n_iter "$sklearn_out")" "$(value rust_n_iter "$rust_out")" <<'PY'
import sys
sk_ms, rs_ms, sk_inertia, rs_inertia = (float(v) for v in sys.argv[1:5])
sk_threads, rs_threads, sk_iter, rs_iter = sys.argv[5:9]
print("== summary")
print(f"scikit-learn: {sk_ms:8.3f} ms/iteration ({sk_threads} threads, n_iter {sk_iter})")
print(f"segflow:      {rs_ms:8.3f} ms/iteration ({rs_threads} threads, n_iter {rs_iter})")
print(f"speed-up (scikit-learn / segflow): {sk_ms / rs_ms:.2f}x")
print(f"inertia: scikit-learn {sk_inertia!r}, segflow {rs_inertia!r}, "
      f"relative difference {abs(sk_inertia - rs_inertia) / abs(sk_inertia):.3e}")
PY
