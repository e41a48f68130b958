"""scikit-learn side of the k-means benchmark (benches/kmeans_vs_sklearn.sh).

  generate DIR --rows N --features D --k K --seed S
      Writes a deterministic data set and k-means++ initial centres, each as raw
      little-endian float64 (NAME.f64) with its shape as text "rows cols" (NAME.shape):
      DIR/x.*, DIR/init.*. The data are K overlapping Gaussian blobs, so that Lloyd keeps
      moving labels for many iterations and every timed run does the same work.
  run DIR --iters N --repeats R [--algorithms lloyd,elkan]
      Times KMeans(n_clusters=K, init=<DIR/init>, n_init=1, algorithm=A,
      max_iter=N, tol=0).fit(X) and the same with max_iter=1, R times each (after one
      warm-up), for each algorithm A given, and prints key=value lines; ms per iteration
      is (t(N) - t(1)) / (N - 1), which leaves out the fixed cost of a fit (validating,
      copying and centring X). The keys of "lloyd" are sklearn_*, those of any other
      algorithm sklearn_<A>_*. N must stay below the iteration at which Lloyd converges
      (48 on the default data).
"""
import argparse
import os
import sys
import time

import numpy as np


def write_array(path_stem, array):
    array = np.ascontiguousarray(array, dtype="<f8")
    array.tofile(path_stem + ".f64")
    with open(path_stem + ".shape", "w") as f:
        f.write(f"{array.shape[0]} {array.shape[1]}\n")


def read_array(path_stem):
    with open(path_stem + ".shape") as f:
        rows, cols = (int(v) for v in f.read().split())
    return np.fromfile(path_stem + ".f64", dtype="<f8").reshape(rows, cols)


def generate(args):
    from sklearn.cluster import kmeans_plusplus

    os.makedirs(args.dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    centres = rng.uniform(-5.0, 5.0, size=(args.k, args.features))
    which = rng.integers(0, args.k, size=args.rows)
    x = centres[which] + rng.normal(0.0, 4.0, size=(args.rows, args.features))
    init, _ = kmeans_plusplus(x, n_clusters=args.k, random_state=args.seed)
    write_array(os.path.join(args.dir, "x"), x)
    write_array(os.path.join(args.dir, "init"), init)
    print(f"generated {args.rows}x{args.features}, k={args.k}, seed={args.seed} in {args.dir}")


def run(args):
    import sklearn
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    x = read_array(os.path.join(args.dir, "x"))
    init = read_array(os.path.join(args.dir, "init"))

    def fit(algorithm, max_iter):
        model = KMeans(
            n_clusters=init.shape[0], init=init, n_init=1, algorithm=algorithm,
            max_iter=max_iter, tol=0.0,
        )
        start = time.perf_counter()
        model.fit(x)
        return time.perf_counter() - start, model

    print(f"sklearn_version={sklearn.__version__}")
    for algorithm in args.algorithms.split(","):
        fit(algorithm, 1)  # warm-up: page the data in, start the OpenMP pool
        per_iteration, whole = [], []
        for _ in range(args.repeats):
            # A fit also validates, copies and centres X: timing 1 and N iterations and
            # taking the difference leaves the cost of N - 1 iterations alone.
            one, _ = fit(algorithm, 1)
            many, model = fit(algorithm, args.iters)
            per_iteration.append((many - one) / (model.n_iter_ - 1))
            whole.append(many / model.n_iter_)
        # The OpenMP pool exists once a fit ran.
        openmp = [p for p in threadpool_info() if p.get("user_api") == "openmp"]
        threads = openmp[0]["num_threads"] if openmp else "unknown"
        key = "sklearn" if algorithm == "lloyd" else f"sklearn_{algorithm}"
        print(f"{key}_algorithm={algorithm}")
        print(f"{key}_threads={threads}")
        print(f"{key}_n_iter={model.n_iter_}")
        print(f"{key}_ms_per_iter={1000 * float(np.median(per_iteration)):.3f}")
        print(f"{key}_ms_per_iter_all={','.join(f'{1000 * t:.3f}' for t in per_iteration)}")
        print(f"{key}_ms_whole_fit_per_iter={1000 * float(np.median(whole)):.3f}")
        print(f"{key}_inertia={model.inertia_!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("dir")
    g.add_argument("--rows", type=int, default=1_000_000)
    g.add_argument("--features", type=int, default=8)
    g.add_argument("--k", type=int, default=8)
    g.add_argument("--seed", type=int, default=20240601)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--iters", type=int, default=20)
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--algorithms", default="lloyd", help="comma-separated KMeans algorithms")
    args = parser.parse_args()
    {"generate": generate, "run": run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
