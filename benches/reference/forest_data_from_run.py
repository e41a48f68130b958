"""Turn a pipeline run's churn training features into the files `benches/forest_fit.rs` reads.

    python benches/reference/forest_data_from_run.py RUN_OUTPUT_DIR OUT_DIR

RUN_OUTPUT_DIR is the output root of a `benches/compare.sh` pipeline run (it holds
`churn_training_features/` and `customer_features/`). The rows are the churn stage's training
table: the 14 numeric features and the three one-hot categoricals (30 columns), 75% train and 25%
test by a seeded shuffle. The label is a proxy, not the stage's (which needs the transactions): a
customer churned when its recency on the run date exceeds 92 days, i.e. it bought nothing in the
label window. The forest's work depends on the rows and how separable they are, so this is what a
fit and a prediction at that size cost, without the 10–12 minutes of the 100M pipeline around
them. Used for the forest's scaling figures from 10M to 100M lines (README, Benchmarks).

Needs polars and numpy (the venv `benches/compare.sh` makes has both).
"""

import os
import sys

import numpy as np
import polars as pl

NUMERIC = [
    "recency_days", "frequency", "monetary", "avg_basket_value", "avg_basket_units",
    "tenure_days", "days_between_orders", "orders_last_90d", "monetary_last_90d",
    "active_months", "cancellation_rate", "distinct_categories", "top_category_share",
    "days_since_signup",
]
CATEGORICAL = ["region", "acquisition_channel", "age_band"]


def main(run_output: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    features = pl.read_parquet(f"{run_output}/churn_training_features/*/*.parquet")
    now = pl.read_parquet(
        f"{run_output}/customer_features/*/*.parquet", columns=["customer_id", "recency_days"]
    ).rename({"recency_days": "recency_on_run_date"})
    table = features.join(now, on="customer_id", how="left")
    labels = (table["recency_on_run_date"] > 92).fill_null(True).cast(pl.UInt8).to_numpy()
    columns = [table[name].cast(pl.Float64).to_numpy() for name in NUMERIC]
    for name in CATEGORICAL:
        for level in sorted(table[name].drop_nulls().unique().to_list()):
            columns.append((table[name] == level).cast(pl.Float64).to_numpy())
    x = np.column_stack(columns).astype("<f8")
    order = np.random.default_rng(0).permutation(len(labels))
    n_train = int(len(labels) * 0.75)
    train, test = order[:n_train], order[n_train:]
    np.ascontiguousarray(x[train]).tofile(f"{out}/train_x.f64")
    np.ascontiguousarray(x[test]).tofile(f"{out}/test_x.f64")
    labels[train].tofile(f"{out}/train_y.u8")
    labels[test].tofile(f"{out}/test_y.u8")
    with open(f"{out}/shape.txt", "w") as shape:
        shape.write(f"{len(train)} {len(test)} {x.shape[1]}\n")
    print(f"{out}: {len(train)} train, {len(test)} test, {x.shape[1]} features, "
          f"{labels.mean():.3f} churned")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
