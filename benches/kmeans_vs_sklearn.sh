#!/usr/bin/env bash
# Side-by-side benchmark of one Lloyd iteration: scikit-learn vs segflow::ml::kmeans, on the
# same deterministic 1M x 8 data set, from the same k-means++ initial centres (k = 8), for the
# same number of iterations, in one run. Prints ms per iteration for both, the ratio, and both
# final inertias with their relative difference. Each line names the algorithm: segflow runs
# plain Lloyd (no bounds); scikit-learn runs algorithm="lloyd", the like-for-like comparison,
# and also algorithm="elkan" (triangle-inequality bounds), so that the table would show it if
# scikit-learn's bounded variant were its faster one on this data.
#
# Environment:
#   SEGFLOW_CACHE              cache root (default ~/.cache/segflow): venv and data live there
#   SEGFLOW_KMEANS_BENCH_CMD   how to run our side; the data directory and options are
#                              appended (default: cargo bench -p segflow-ml --bench kmeans_iteration --)
#   KMEANS_BENCH_ITERS         Lloyd iterations per timed fit (default 20; must stay below
#                              the 48 at which Lloyd converges on this data)
#   KMEANS_BENCH_REPEATS       timed fits per side (default 5; the median is reported)
#   KMEANS_BENCH_SKLEARN_ALGORITHMS  scikit-learn algorithms timed besides lloyd, which always
#                              runs (default lloyd,elkan)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SEGFLOW_CACHE:-$HOME/.cache/segflow}"
venv="$cache/venv-bench"
data="$cache/kmeans-bench-data"
iters="${KMEANS_BENCH_ITERS:-20}"
repeats="${KMEANS_BENCH_REPEATS:-5}"
sklearn_algorithms="${KMEANS_BENCH_SKLEARN_ALGORITHMS:-lloyd,elkan}"
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

# The like-for-like pair (scikit-learn's lloyd, then ours) runs back to back, so that a burst
# of load from elsewhere on the machine is less likely to fall on one side only; any other
# scikit-learn algorithm runs after them. Over the pair, the CPU time that other processes
# took is measured (all busy CPU time minus this script's children's), so that a run spoilt
# by someone else's build can be told from a clean one.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
own_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; } # children's user + system time
pair_start_busy="$(busy_ticks)"
pair_start_own="$(own_ticks)"
pair_start_ns="$(date +%s%N)"
sklearn_run() {
    echo "== scikit-learn algorithm=$1 ($iters iterations, $repeats repeats)" >&2
    "$venv/bin/python" "$reference" run "$data" --iters "$iters" --repeats "$repeats" \
        --algorithms "$1"
}
sklearn_out="$(sklearn_run lloyd)"
echo "$sklearn_out"
echo "== segflow: $rust_cmd $data --iters $iters --repeats $repeats" >&2
# shellcheck disable=SC2086 # the command is meant to split into words
rust_out="$($rust_cmd "$data" --iters "$iters" --repeats "$repeats")"
echo "$rust_out"
other_cpu_ms="$(( ($(busy_ticks) - pair_start_busy - ($(own_ticks) - pair_start_own)) \
    * 1000 / $(getconf CLK_TCK) ))"
pair_ms="$(( ($(date +%s%N) - pair_start_ns) / 1000000 ))"
IFS=',' read -r -a other_algorithms <<<"$sklearn_algorithms"
for algorithm in "${other_algorithms[@]}"; do
    if [[ "$algorithm" != lloyd ]]; then
        other_out="$(sklearn_run "$algorithm")"
        echo "$other_out"
        sklearn_out+=$'\n'"$other_out"
    fi
done
rust_out+=$'\n'"other_cpu_ms=$other_cpu_ms"$'\n'"pair_ms=$pair_ms"

"$venv/bin/python" - "$sklearn_out" "$rust_out" <<'PY'
import sys
values = {}
for line in "\n".join(sys.argv[1:3]).splitlines():
    key, sep, value = line.partition("=")
    if sep:
        values[key] = value
rs_ms = float(values["rust_ms_per_iter"])
sk_keys = sorted((k[: -len("_algorithm")] for k in values
                  if k.startswith("sklearn") and k.endswith("_algorithm")),
                 key=lambda k: (k != "sklearn", k))
sides = [(f"segflow lloyd_from (algorithm: {values['rust_algorithm']})", "rust")]
sides += [(f"scikit-learn KMeans(algorithm=\"{values[k + '_algorithm']}\")", k) for k in sk_keys]
width = max(len(label) for label, _ in sides)
print("== summary")
for label, key in sides:
    print(f"{label + ':':<{width + 1}} {float(values[key + '_ms_per_iter']):8.3f} ms/iteration "
          f"({values[key + '_threads']} threads, n_iter {values[key + '_n_iter']})")
for key in sk_keys:
    sk_ms = float(values[key + "_ms_per_iter"])
    print(f"speed-up (scikit-learn {values[key + '_algorithm']} / segflow lloyd): "
          f"{sk_ms / rs_ms:.2f}x")
other_s, pair_s = int(values["other_cpu_ms"]) / 1000, int(values["pair_ms"]) / 1000
print(f"other processes used {other_s:.1f} CPU-seconds during the {pair_s:.1f} s of the "
      f"lloyd pair ({100 * other_s / pair_s:.0f}% of one core on average); the ratio is "
      f"only trustworthy when that is near 0")
rs_inertia = float(values["rust_inertia"])
for key in sk_keys:
    sk_inertia = float(values[key + "_inertia"])
    print(f"inertia: scikit-learn {values[key + '_algorithm']} {sk_inertia!r}, segflow "
          f"{rs_inertia!r}, relative difference "
          f"{abs(sk_inertia - rs_inertia) / abs(sk_inertia):.3e}")
PY
