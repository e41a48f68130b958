"""scikit-learn's k-means on the Online Retail segment features, for the golden file the
test `segment::online_retail_inertia_is_within_0_1_percent_of_scikit_learn` compares with.

  python online_retail_kmeans.py FEATURES_DIR K OUT_JSON

FEATURES_DIR is the `customer_features` partition written by
`segflow run pipelines/online_retail.yaml --run-date 2011-12-10`. The preparation of
pipelines/online_retail.yaml's segment stage is re-implemented here in numpy, independently
of segflow (winsorize at numpy quantiles, log1p / signed log1p, standardize with the
population standard deviation), so a drift in segflow's preparation shows as a different
inertia. The initial centres are scikit-learn's own k-means++ (random_state=0); segflow's
test starts its Lloyd iterations from the same centres and must land within 0.1%.
Run by benches/online_retail_golden.sh, which makes the venv.
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
import sklearn
from sklearn.cluster import KMeans, kmeans_plusplus

# (column, transform, winsorize quantiles) as in pipelines/online_retail.yaml.
FEATURES = [
    ("recency_days", "log1p", None),
    ("frequency", "log1p", (0.0, 0.99)),
    ("monetary", "signed_log1p", (0.01, 0.99)),
    ("avg_basket_value", "signed_log1p", (0.01, 0.99)),
    ("tenure_days", None, None),
    ("cancellation_rate", None, None),
]


def prepare(table):
    columns = []
    for name, transform, winsorize in FEATURES:
        x = np.asarray(table.column(name).to_pylist(), dtype=np.float64)
        if winsorize is not None:
            lo, hi = np.quantile(x, winsorize)
            x = np.clip(x, lo, hi)
        if transform == "log1p":
            x = np.log1p(x)
        elif transform == "signed_log1p":
            x = np.sign(x) * np.log1p(np.abs(x))
        std = x.std()
        x = (x - x.mean()) / (std if std > 0 else 1.0)
        columns.append(x)
    return np.column_stack(columns)


def main():
    features_dir, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    table = pq.read_table(features_dir, columns=["customer_id"] + [f[0] for f in FEATURES]).sort_by("customer_id")
    x = prepare(table)
    init, _ = kmeans_plusplus(x, n_clusters=k, random_state=0)
    model = KMeans(n_clusters=k, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(x)
    golden = {
        "about": "scikit-learn KMeans(init=init, n_init=1, lloyd, max_iter=300, tol=1e-4) on the "
                 "Online Retail segment features; see benches/reference/online_retail_kmeans.py",
        "sklearn_version": sklearn.__version__,
        "features": [f[0] for f in FEATURES],
        "rows": int(x.shape[0]),
        "x_sum": float(x.sum()),
        "x_abs_sum": float(np.abs(x).sum()),
        "k": k,
        "init": init.tolist(),
        "sklearn_inertia": float(model.inertia_),
        "sklearn_n_iter": int(model.n_iter_),
    }
    with open(out, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"rows={x.shape[0]} k={k} inertia={model.inertia_!r} n_iter={model.n_iter_}")


if __name__ == "__main__":
    main()
