"""The reference pipeline of the end-to-end benchmark (issue 8): what segflow computes for
pipelines/demo.yaml or pipelines/online_retail.yaml, done with the usual Python stack —
polars for cleaning and dedup, DuckDB for the SQL features, scikit-learn for k-means and the
churn forest, pyarrow for the Parquet outputs.

  python pipeline.py demo --data DIR --out OUT --json RESULT.json
      DIR as written by `segflow demo-data DIR` (customers.parquet, transactions/year=YYYY/)
  python pipeline.py online_retail --data .../online_retail.parquet --out OUT --json RESULT.json

Options: --run-date YYYY-MM-DD (the output partition, default today in UTC), --run-id ID.
Every stage is timed on its own (time.perf_counter, wall); RESULT.json holds the times, the
quality figures, the row counts and the library versions. All cores are used: DuckDB's and
polars' default thread counts, n_jobs=-1 and OpenMP for scikit-learn.

The settings below are copied from the YAML files (PIPELINES); the SQL is segflow's own
files under sql/, read as they are (see `duckdb_sql` for the translation). What each stage
does, all of it because segflow does it for these pipelines:

- read: the Parquet inputs into polars (Hive folders become string columns, as in segflow).
- clean: casts to the declared types, `cast_failed:`/`null:` rejects, fills, the YAML's rules
  (the SQL predicates verbatim, through polars' SQL expression parser; a NULL fails), first
  reason wins in segflow's order, exact dedup of the valid rows, the rejects table (columns
  as read plus reason, stage, run id) and the counts, rows_in = out + rejected + deduplicated.
- features: the SQL stages as DuckDB views over the clean frame (handed over as Arrow, no
  copy), materialised for the feature table (as_of) and the churn training table (as_of bound
  to observation_date).
- segment: impute (`fail`: no nulls allowed) → winsorize at numpy's linear quantiles →
  log1p / signed log1p → StandardScaler; KMeans(k-means++, n_init=10, max_iter=300,
  tol=1e-4, lloyd) for every k of [1, 15], silhouette (exact up to 10,000 customers, a seeded
  sample above); k by segflow's rule (Kneedle knee, unless its silhouette is more than 0.1
  below the best); profiles (size, share, revenue share, mean and median of the raw
  features, centroid z-scores, label words), ranked by revenue share; distance to the
  segment and the second-nearest segment per customer.
- churn: label = no transaction in [observation_date, +90 days) for the customers of the
  training table (refused when the data end inside the window); numeric features as they
  are (segflow's default `nulls: missing`: NaN stays, the trees route it), one-hot levels
  (the 20 most frequent, else `__other__`) fitted on the training split; stratified split
  (test 25%); RandomForestClassifier with the YAML's settings and OOB; DecisionTree
  (max_depth 5) as the baseline; max-F1 thresholds chosen on the forest's OOB probabilities
  and on the tree's 5-fold out-of-fold predictions (segflow always fits those 5 trees);
  `cross_validation: 5` where the YAML asks (online_retail: 5 more forests); ROC AUC, PR AUC,
  log loss, Brier, the confusion metrics at the threshold and lift by decile for both models
  on train and test; OOB accuracy and ROC AUC; impurity importances; permutation importance
  on the test split (segflow's default: at most 10,000 customers, ROC AUC drop, 5 repeats, a one-hot feature's columns
  shuffled together); every current customer scored with its risk decile, decision and the 3
  features contributing most along its trees' paths (segflow's default `explain: 3`); churn
  per segment.
- write: the tables as zstd (level 3) Parquet with segflow's row-group size, sorted like
  segflow's sink (declared sort columns, then every other column), each file fsynced, under
  OUT/<table>/run_date=D/; the forest's nodes as OUT/models/churn/run_date=D/trees.parquet.

Left out, each a few milliseconds in segflow: the calibration bins and the fixed-grid ROC/PR
curves of the evaluation table, the reports (JSON, Markdown, HTML), the model JSON files,
segment_centroids, segment_migration (empty on a first run), manifests and the atomic commit.

Not the same as segflow, by nature: the random streams (split, bootstraps, k-means++ and
silhouette samples) are numpy's, seeded with the pipeline seed where segflow derives one per
stage; scikit-learn's trees split on exact values where segflow's bin them (256 bins);
DuckDB's AVG and division of DECIMALs give DOUBLEs (differences up to 1e-10 in
avg_basket_value, days_between_orders and top_category_share).

Timing: segflow's SQL stages are lazy, so their work shows in its segment and churn stages
and in its writes; compare totals. RESULT.json also records import_seconds (library imports,
before the clock starts). scikit-learn's OpenMP threads spin while they wait: with the cores
busy with other work, the k-means loop ran 10-30x slower (segment stage 17-64 s instead of
1.3-6.4 s, 2 busy cores, 2026-11-24). Measure on a quiet machine, or export
OMP_WAIT_POLICY=passive and say so.
"""

import time

_STARTED = time.perf_counter()

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from sklearn.cluster import KMeans
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import average_precision_score, roc_auc_score, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

IMPORT_SECONDS = time.perf_counter() - _STARTED

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
ID = "customer_id"


# --- the two pipelines, as their YAML files declare them ---------------------------------------

REJECT = "reject"


@dataclass(frozen=True)
class Fill:
    """`nulls: { fill: value }`."""

    value: object


@dataclass(frozen=True)
class SqlStage:
    name: str
    sql: str
    # `bind:` of the YAML: placeholder → the variable whose value it takes.
    bind: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentFeature:
    transform: str | None = None  # None | "log1p" | "signed_log1p"
    winsorize: tuple | None = None  # (lower, upper) quantiles
    labels: tuple | None = None  # (low, high) words; default "low <name>", "high <name>"


@dataclass(frozen=True)
class Pipeline:
    seed: int
    vars: dict
    read: Callable[[Path], dict]  # the --data path → {input name: polars frame}
    raw_input: str  # the clean stage's input
    clean_stage: str  # the clean stage's name: its output table and the rejects' `_stage`
    columns: dict  # declared column → (polars type, REJECT or Fill)
    rules: dict  # rule name → SQL predicate, verbatim
    sql_stages: list
    customer_features: str  # the sql stage written as customer_features and segmented
    training_table: str  # the churn stage's `table:`
    segment_features: dict
    churn_numeric: list
    churn_one_hot: list
    n_trees: int
    min_samples_leaf: int
    cv_folds: int | None
    # The output table the churn training features are written to, when the YAML has one.
    training_output: str | None = None
    # The forest's max_samples (None: every tree draws as many rows as the training split).
    max_samples: float | None = None


def read_demo(data: Path) -> dict:
    return {
        # Hive partition folders are string columns in segflow (engine/mod.rs).
        "raw_transactions": pl.read_parquet(data / "transactions" / "**" / "*.parquet", hive_partitioning=True, hive_schema={"year": pl.String}),
        "customers": pl.read_parquet(data / "customers.parquet"),
    }


def read_online_retail(data: Path) -> dict:
    return {"online_retail": pl.read_parquet(data)}


SEGMENT_FEATURES = {
    "recency_days": SegmentFeature("log1p", labels=("recent", "lapsed")),
    "frequency": SegmentFeature("log1p", (0.0, 0.99), ("rare", "frequent")),
    "monetary": SegmentFeature("signed_log1p", (0.01, 0.99), ("low value", "high value")),
    "avg_basket_value": SegmentFeature("signed_log1p", (0.01, 0.99), ("small baskets", "big baskets")),
    "tenure_days": SegmentFeature(labels=("new", "long-standing")),
    "cancellation_rate": SegmentFeature(labels=("few returns", "many returns")),
}
PURCHASE_FEATURES = [
    "recency_days", "frequency", "monetary", "avg_basket_value", "avg_basket_units", "tenure_days", "days_between_orders",
    "orders_last_90d", "monetary_last_90d", "active_months", "cancellation_rate", "distinct_categories", "top_category_share",
]

PIPELINES = {
    "demo": Pipeline(
        seed=42,
        vars={"as_of": dt.date(2025, 1, 1), "observation_date": dt.date(2024, 10, 1)},
        read=read_demo,
        raw_input="raw_transactions",
        clean_stage="transactions",
        columns={
            "invoice": (pl.String, REJECT),
            "customer_id": (pl.Int64, REJECT),
            "invoice_ts": (pl.Datetime("us"), REJECT),
            "quantity": (pl.Int64, REJECT),
            "unit_price": (pl.Float64, REJECT),
            "category": (pl.String, Fill("unknown")),
        },
        rules={
            "nonzero_quantity": "quantity <> 0",
            "positive_price": "unit_price > 0",
            "cancellation_is_negative": "NOT starts_with(invoice, 'C') OR quantity < 0",
        },
        sql_stages=[
            SqlStage("purchase_features", (SQL_DIR / "purchase_features.sql").read_text()),
            SqlStage("customer_features", (SQL_DIR / "demo_customer_features.sql").read_text()),
            SqlStage("purchase_features_at_observation", (SQL_DIR / "purchase_features.sql").read_text(), {"as_of": "observation_date"}),
            # The inline query of the YAML's features_at_observation stage.
            SqlStage("features_at_observation", """
SELECT
    p.*,
    c.age_band,
    c.region,
    c.acquisition_channel,
    (date_part('epoch', CAST(${observation_date} AS TIMESTAMP)) - date_part('epoch', CAST(c.signup_date AS TIMESTAMP))) / 86400.0 AS days_since_signup
FROM purchase_features_at_observation p
JOIN customers c ON c.customer_id = p.customer_id
"""),
        ],
        customer_features="customer_features",
        training_table="features_at_observation",
        training_output="churn_training_features",
        segment_features=SEGMENT_FEATURES,
        churn_numeric=PURCHASE_FEATURES + ["days_since_signup"],
        churn_one_hot=["region", "acquisition_channel", "age_band"],
        n_trees=100,
        min_samples_leaf=1,
        cv_folds=None,
    ),
    "online_retail": Pipeline(
        seed=42,
        vars={"as_of": dt.date(2011, 12, 10), "observation_date": dt.date(2011, 9, 10)},
        read=read_online_retail,
        raw_input="online_retail",
        clean_stage="retail_clean",
        columns={
            "CustomerID": (pl.Int64, REJECT),
            "InvoiceNo": (pl.String, REJECT),
            "InvoiceDate": (pl.Datetime("us"), REJECT),
            "Quantity": (pl.Int64, REJECT),
            "UnitPrice": (pl.Float64, REJECT),
            "Description": (pl.String, Fill("")),
        },
        rules={
            "non_negative_price": '"UnitPrice" >= 0',
            "negative_quantity_only_in_cancellations": '"Quantity" > 0 OR starts_with("InvoiceNo", \'C\')',
        },
        sql_stages=[
            # The inline queries of the YAML's transactions and customer_features stages.
            SqlStage("transactions", """
SELECT
    "InvoiceNo"   AS invoice,
    "StockCode"   AS stock_code,
    "CustomerID"  AS customer_id,
    "InvoiceDate" AS invoice_ts,
    substr("StockCode", 1, 3) AS category,
    "Quantity"    AS quantity,
    "UnitPrice"   AS unit_price,
    "Country"     AS country
FROM retail_clean
"""),
            SqlStage("purchase_features", (SQL_DIR / "purchase_features.sql").read_text()),
            SqlStage("customer_features", """
WITH country_counts AS (
    SELECT customer_id, country, COUNT(*) AS lines,
           ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY COUNT(*) DESC, country) AS rank
    FROM transactions
    WHERE customer_id IS NOT NULL
    GROUP BY customer_id, country
)
SELECT p.*, c.country
FROM purchase_features p
JOIN country_counts c ON c.customer_id = p.customer_id AND c.rank = 1
"""),
            SqlStage("purchase_features_at_observation", (SQL_DIR / "purchase_features.sql").read_text(), {"as_of": "observation_date"}),
        ],
        customer_features="customer_features",
        training_table="purchase_features_at_observation",
        segment_features=SEGMENT_FEATURES,
        churn_numeric=PURCHASE_FEATURES,
        churn_one_hot=[],
        n_trees=200,
        min_samples_leaf=3,
        cv_folds=5,
    ),
}

# What both YAML files set (k_range, test_size, window_days, the baseline's depth) and segflow's
# defaults for what they leave out.
K_RANGE = (1, 15)
N_INIT, MAX_ITER, TOL = 10, 300, 1e-4
SILHOUETTE_SAMPLE = 10_000
SILHOUETTE_OVERRIDE_MARGIN = 0.1
LABEL_THRESHOLD, LABEL_WORDS = 0.5, 3
TEST_SIZE = 0.25
WINDOW_DAYS = 90
BASELINE_MAX_DEPTH = 5
THRESHOLD_FOLDS = 5
ONE_HOT_MAX_LEVELS, OTHER_LEVEL = 20, "__other__"
PERMUTATION_REPEATS = 5
PERMUTATION_ROWS = 10_000
EXPLAIN = 3
DECILES = 10
LOG_LOSS_EPS = 1e-15
ROWS_PER_ROW_GROUP = 262_144
REVENUE = "monetary"  # `revenue: monetary` in both YAML files


# --- clean --------------------------------------------------------------------------------------

REASON = "__reject_reason"
RAW = "__raw_"


def first_reason(conditions):
    """The reason of the first (condition, reason) that holds, else null."""
    if not conditions:
        return pl.lit(None, pl.String)
    (condition, reason), *rest = conditions
    chain = pl.when(condition).then(pl.lit(reason))
    for condition, reason in rest:
        chain = chain.when(condition).then(pl.lit(reason))
    return chain.otherwise(pl.lit(None, pl.String))


def clean(raw: pl.DataFrame, p: Pipeline, run_id: str):
    """Returns (clean rows, rejects, counts) as segflow's clean stage (src/stage/clean.rs)."""
    casts = {name: pl.col(name).cast(dtype, strict=False) for name, (dtype, _) in p.columns.items()}
    # Casts and nulls are judged on the values as read, column by column in input order.
    pre_reasons = []
    for name in raw.columns:
        if name not in p.columns:
            continue
        pre_reasons.append((pl.col(name).is_not_null() & casts[name].is_null(), f"cast_failed:{name}"))
        if p.columns[name][1] == REJECT:
            pre_reasons.append((pl.col(name).is_null(), f"null:{name}"))
    typed = [
        (casts[name].fill_null(pl.lit(nulls.value)) if isinstance(nulls, Fill) else casts[name]).alias(name)
        for name, (_, nulls) in p.columns.items()
    ]
    # Rules on the typed, filled values; a rule that is NULL fails.
    rule_reasons = [(~pl.sql_expr(predicate).fill_null(False), name) for name, predicate in p.rules.items()]
    classified = raw.lazy().with_columns(
        *[pl.col(name).alias(RAW + name) for name in p.columns],
        *typed,
        first_reason(pre_reasons).alias(REASON),
    ).with_columns(pl.coalesce(REASON, first_reason(rule_reasons)).alias(REASON))

    valid = classified.filter(pl.col(REASON).is_null()).select(raw.columns)
    rejects = classified.filter(pl.col(REASON).is_not_null()).select(
        *[pl.col(RAW + name).alias(name) if name in p.columns else pl.col(name) for name in raw.columns],
        pl.col(REASON).alias("_reject_reason"),
        pl.lit(p.clean_stage).alias("_stage"),
        pl.lit(run_id).alias("_run_id"),
    )
    # Lazy, collected together: polars classifies once for all three. On 10M demo lines this
    # took 11 s and 3.4 GB against 12.7 s and 5.8 GB eager (2 busy cores, 2026-11-24).
    valid_rows, clean_rows, rejects = pl.collect_all([valid.select(pl.len()), valid.unique(), rejects])
    counts = {
        "rows_in": raw.height,
        "rows_out": clean_rows.height,
        "rows_rejected": rejects.height,
        "rows_deduplicated": valid_rows.item() - clean_rows.height,
    }
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"] + counts["rows_deduplicated"], counts
    for reason, n in rejects.group_by("_reject_reason").len().iter_rows():
        counts[f"rejected:{reason}"] = n
    return clean_rows, rejects, counts


def data_quality(counts: dict, stage: str, run_id: str) -> pa.Table:
    metrics = sorted(counts)
    return pa.table({
        "stage": [stage] * len(metrics),
        "run_id": [run_id] * len(metrics),
        "metric": metrics,
        "value": pa.array([counts[m] for m in metrics], pa.int64()),
    })


# --- features -----------------------------------------------------------------------------------


def duckdb_sql(sql: str, values: dict) -> str:
    """segflow's SQL (DataFusion dialect) for DuckDB. The queries run unchanged but for the
    placeholders: segflow binds `${name}` to the variable's typed value; a DuckDB view takes no
    parameters, so the value is written as a typed literal (the values are this file's
    constants, never user input)."""

    def literal(match):
        value = values[match.group(1)]
        assert isinstance(value, dt.date), f"only DATE variables are used: {match.group(1)}"
        return f"DATE '{value.isoformat()}'"

    return re.sub(r"\$\{(\w+)\}", literal, sql)


def create_views(con, p: Pipeline):
    """Each sql stage as a view, lazy like segflow's frames. DataFusion sums integers as
    BIGINT, DuckDB as HUGEINT: such columns are cast back, so the tables keep segflow's types."""
    for stage in p.sql_stages:
        values = {**p.vars, **{placeholder: p.vars[var] for placeholder, var in stage.bind.items()}}
        con.execute(f'CREATE VIEW "__{stage.name}" AS {duckdb_sql(stage.sql, values)}')
        columns = con.execute(f'DESCRIBE "__{stage.name}"').fetchall()
        casts = [f'CAST("{name}" AS BIGINT) AS "{name}"' for name, kind, *_ in columns if kind == "HUGEINT"]
        replace = f" REPLACE ({', '.join(casts)})" if casts else ""
        con.execute(f'CREATE VIEW "{stage.name}" AS SELECT *{replace} FROM "__{stage.name}"')


# --- segment ------------------------------------------------------------------------------------


def prepare_segment_features(frame: pl.DataFrame, features: dict) -> np.ndarray:
    """segflow's preparation (crates/segflow-ml/src/prep.rs), each step fitted on the output of
    the one before: winsorize at numpy's linear quantiles, transform, standardize."""
    columns = []
    for name, spec in features.items():
        x = frame[name].cast(pl.Float64).to_numpy()
        assert not np.isnan(x).any(), f"{name} has nulls and its impute is `fail`"
        if spec.winsorize is not None:
            lower, upper = np.quantile(x, spec.winsorize)
            x = np.clip(x, lower, upper)
        if spec.transform == "log1p":
            x = np.log1p(x)
        elif spec.transform == "signed_log1p":
            x = np.sign(x) * np.log1p(np.abs(x))
        columns.append(x)
    return StandardScaler().fit_transform(np.column_stack(columns))


def knee(curve):
    """Kneedle as segflow's kmeans::knee: k and inertia scaled to 0..1, the interior point
    farthest below the chord from the first point to the last (ties: the smaller k)."""
    if len(curve) < 3:
        return None
    ks = np.array([c["k"] for c in curve], float)
    inertia = np.array([c["inertia"] for c in curve])
    k_span, inertia_span = ks[-1] - ks[0], inertia.max() - inertia.min()
    if not (k_span > 0 and inertia_span > 0):
        return None
    x, y = (ks - ks[0]) / k_span, (inertia - inertia.min()) / inertia_span
    below = y[0] + (y[-1] - y[0]) * x - y
    interior = below[1:-1]
    best = int(np.argmax(interior))
    return int(ks[1 + best]) if interior[best] > 0 else None


def choose_k(curve):
    """segflow's kmeans::choose_k: the knee, unless its silhouette is more than 0.1 below the
    best silhouette (then the best's k); no knee: the best silhouette's k; neither: k_min."""
    knee_k = knee(curve)
    scored = [c for c in curve if c["silhouette"] is not None]
    best = max(scored, key=lambda c: c["silhouette"]) if scored else None  # max keeps the first: ties to the smaller k
    if knee_k is not None and best is not None:
        knee_silhouette = next(c["silhouette"] for c in curve if c["k"] == knee_k)
        if knee_silhouette is not None and knee_silhouette < best["silhouette"] - SILHOUETTE_OVERRIDE_MARGIN:
            return best["k"]
        return knee_k
    if knee_k is not None:
        return knee_k
    return best["k"] if best is not None else curve[0]["k"]


def silhouette(x, labels, seed):
    if not 2 <= len(np.unique(labels)) < len(labels):
        return None
    sample = SILHOUETTE_SAMPLE if len(labels) > SILHOUETTE_SAMPLE else None
    return float(silhouette_score(x, labels, sample_size=sample, random_state=seed))


def segment(features: pl.DataFrame, p: Pipeline, evaluation):
    """Returns (customer_segments, segment_profiles, the chosen fit's figures)."""
    x = prepare_segment_features(features, p.segment_features)
    n = len(x)
    curve, fits = [], {}
    for k in range(K_RANGE[0], min(K_RANGE[1], n) + 1):
        fit = KMeans(n_clusters=k, init="k-means++", n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, random_state=p.seed, algorithm="lloyd").fit(x)
        curve.append({"k": k, "inertia": float(fit.inertia_), "silhouette": silhouette(x, fit.labels_, p.seed)})
        fits[k] = fit
        evaluation.push("segments", "kmeans", "all", "inertia", fit.inertia_, k=k)
        evaluation.push("segments", "kmeans", "all", "silhouette", curve[-1]["silhouette"], k=k)
    k = choose_k(curve)
    fit = fits[k]
    labels = fit.labels_

    # Profiles, ranked by revenue share (best first, ties by cluster index); ids are the ranks.
    means, stds = x.mean(axis=0), x.std(axis=0)
    z_scores = np.where(stds > 0, (fit.cluster_centers_ - means) / np.where(stds > 0, stds, 1.0), 0.0)
    customer_revenue = features[REVENUE].cast(pl.Float64).to_numpy()
    revenue = np.bincount(labels, weights=customer_revenue, minlength=k)
    revenue_share = revenue / customer_revenue.sum()
    order = sorted(range(k), key=lambda c: (-revenue_share[c], c))
    segment_id = np.empty(k, np.int32)
    segment_id[order] = np.arange(1, k + 1)
    sizes = np.bincount(labels, minlength=k)
    names = list(p.segment_features)
    profiles = {
        "segment": segment_id[order],
        "rank": np.arange(1, k + 1, dtype=np.int32),
        "label": [segment_label(z_scores[c], p.segment_features) for c in order],
        "customers": sizes[order].astype(np.int64),
        "share": sizes[order] / n,
        "revenue": revenue[order],
        "revenue_share": revenue_share[order],
        "churn_rate": pa.nulls(k, pa.float64()),
        "rank_value": revenue_share[order],
    }
    for name in names:
        values = features[name].cast(pl.Float64).to_numpy()
        profiles[f"mean_{name}"] = [values[labels == c].mean() for c in order]
        profiles[f"median_{name}"] = [np.median(values[labels == c]) for c in order]
    for c in order:
        evaluation.push("segments", "kmeans", "all", "customers", sizes[c], segment=int(segment_id[c]))
        for j, name in enumerate(names):
            evaluation.push("segments", "kmeans", "all", "centroid_z_score", z_scores[c, j], segment=int(segment_id[c]), feature=name)
    evaluation.push("segments", "kmeans", "all", "k", k)
    evaluation.push("segments", "kmeans", "all", "n_iter", fit.n_iter_)
    # scikit-learn does not say whether Lloyd converged; stopping before max_iter is the sign.
    evaluation.push("segments", "kmeans", "all", "converged", float(fit.n_iter_ < MAX_ITER))

    distances = fit.transform(x)
    nearest = np.argsort(distances, axis=1)
    customer_segments = pa.table({
        ID: features[ID].to_arrow(),
        "segment": pa.array(segment_id[labels], pa.int32()),
        "distance": distances[np.arange(n), labels],
        "second_segment": pa.array(segment_id[nearest[:, 1]] if k > 1 else [None] * n, pa.int32()),
    })
    chosen = next(c for c in curve if c["k"] == k)
    return customer_segments, pa.table(profiles), chosen


def segment_label(z, features: dict) -> str:
    """The (at most three) features whose centroid z-score is at least 0.5 from the average,
    strongest first, with their low / high words (segment/profile.rs)."""
    standing_out = []
    for position, (name, spec) in enumerate(features.items()):
        low, high = spec.labels or (f"low {name}", f"high {name}")
        if abs(z[position]) >= LABEL_THRESHOLD and z[position] != 0:
            standing_out.append((-abs(z[position]), position, high if z[position] > 0 else low))
    words = [word for _, _, word in sorted(standing_out)[:LABEL_WORDS]]
    return " · ".join(words) if words else "typical"


# --- churn --------------------------------------------------------------------------------------


def churn_labels(con, training: pl.DataFrame, observation: dt.date) -> np.ndarray:
    """1 when the customer has no transaction in [observation, observation + 90 days)
    (src/stage/churn/label.rs): the population is the training table's customers."""
    end = observation + dt.timedelta(days=WINDOW_DAYS)
    [(last,)] = con.sql("SELECT max(invoice_ts) FROM transactions").fetchall()
    if last is None or last < dt.datetime.combine(end - dt.timedelta(days=1), dt.time()):
        raise SystemExit(f"the churn window runs from {observation} to {end} but the transactions end on {last}")
    active = con.sql(
        "SELECT DISTINCT customer_id FROM transactions WHERE invoice_ts >= $start AND invoice_ts < $end AND customer_id IS NOT NULL",
        params={"start": observation, "end": end},
    ).pl()[ID]
    return (~training[ID].is_in(active.implode())).cast(pl.Int64).to_numpy()


@dataclass
class ChurnPreparation:
    """segflow's churn preparation: numeric columns as they are (NaN for null), one-hot
    levels fitted on the training split (the 20 most frequent, ties by name, in name order;
    `__other__` when there are more; a null or unseen level sets no column)."""

    numeric: list
    levels: dict  # one-hot feature → (levels, has_other)

    @classmethod
    def fit(cls, frame: pl.DataFrame, numeric: list, one_hot: list):
        levels = {}
        for name in one_hot:
            counts = frame[name].drop_nulls().value_counts().sort(["count", name], descending=[True, False])
            kept = sorted(counts[name].head(ONE_HOT_MAX_LEVELS).to_list())
            levels[name] = (kept, counts.height > ONE_HOT_MAX_LEVELS)
        return cls(numeric, levels)

    def columns(self):
        """(prepared column name, index of its declared feature)."""
        out = [(name, i) for i, name in enumerate(self.numeric)]
        for i, (name, (kept, has_other)) in enumerate(self.levels.items(), start=len(self.numeric)):
            out += [(f"{name}={level}", i) for level in kept + ([OTHER_LEVEL] if has_other else [])]
        return out

    def transform(self, frame: pl.DataFrame) -> np.ndarray:
        expressions = [pl.col(name).cast(pl.Float64).fill_null(np.nan) for name in self.numeric]
        for name, (kept, has_other) in self.levels.items():
            value = pl.col(name).cast(pl.String)
            expressions += [(value == level).fill_null(False).cast(pl.Float64) for level in kept]
            if has_other:
                expressions.append((value.is_not_null() & ~value.is_in(kept)).cast(pl.Float64))
        return frame.select([e.alias(str(i)) for i, e in enumerate(expressions)]).to_numpy()


def max_f1_threshold(y, scores) -> float:
    """The distinct score maximising F1 of `score >= threshold`; ties: the higher threshold."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_y = scores[order], y[order]
    last_of_score = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.cumsum(sorted_y)[last_of_score]
    fp = np.cumsum(1 - sorted_y)[last_of_score]
    f1 = 2 * tp / (tp + fp + y.sum())
    return float(sorted_scores[last_of_score][np.argmax(f1)])


def risk_deciles(scores) -> np.ndarray:
    """1 = the riskiest tenth: ranked by score (ties by row), cut like numpy's array_split."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    deciles = np.empty(len(scores), np.int32)
    for decile, rows in enumerate(np.array_split(order, DECILES), start=1):
        deciles[rows] = decile
    return deciles


def ratio(a, b):
    return a / b if b else 0.0


def probability_metrics(y, scores) -> dict:
    """The threshold-free metrics, null where the split cannot define them. Log loss clips
    probabilities to [1e-15, 1 - 1e-15] like segflow (scikit-learn clips at the float's eps)."""
    clipped = np.clip(scores, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return {
        "roc_auc": roc_auc_score(y, scores) if 0 < y.sum() < len(y) else None,
        "pr_auc": average_precision_score(y, scores) if y.sum() > 0 else None,
        "log_loss": -np.mean(np.where(y == 1, np.log(clipped), np.log1p(-clipped))),
        "brier_score": np.mean((scores - y) ** 2),
    }


def evaluate_split(evaluation, model, split, y, scores, threshold):
    """The metrics of churn/evaluate.rs on one split (see the module docstring for the ones
    left out)."""
    def push(metric, value, **keys):
        evaluation.push("churn", model, split, metric, value, **keys)

    push("customers", len(y))
    push("churners", y.sum())
    for metric, value in probability_metrics(y, scores).items():
        push(metric, value)
    predicted = scores >= threshold
    tp, fp = int((predicted & (y == 1)).sum()), int((predicted & (y == 0)).sum())
    fn, tn = int((~predicted & (y == 1)).sum()), int((~predicted & (y == 0)).sum())
    rates = [ratio(tp, tp + fn)] * (tp + fn > 0) + [ratio(tn, tn + fp)] * (tn + fp > 0)
    for metric, value in [
        ("accuracy", ratio(tp + tn, len(y))), ("balanced_accuracy", sum(rates) / len(rates) if rates else 0.0),
        ("precision", ratio(tp, tp + fp)), ("recall", ratio(tp, tp + fn)), ("f1", ratio(2 * tp, 2 * tp + fp + fn)),
        ("true_positives", tp), ("false_positives", fp), ("true_negatives", tn), ("false_negatives", fn),
    ]:
        push(metric, value)
    if y.sum() > 0:
        deciles = risk_deciles(scores)
        captured = 0
        for decile in range(1, DECILES + 1):
            in_decile = deciles == decile
            rate = ratio(y[in_decile].sum(), in_decile.sum())
            captured += y[in_decile].sum()
            push("churn_rate", rate, decile=decile)
            push("lift", rate / y.mean(), decile=decile)
            push("cumulative_gain", captured / y.sum(), decile=decile)


def grouped_permutation_importance(forest, x, y, groups, n_features, seed):
    """ROC AUC drop when a declared feature's columns are shuffled together, 5 repeats. A
    feature's repeats are scored in one predict_proba call: one dispatch to the forest's
    threads instead of five."""
    rng = np.random.default_rng(seed)
    baseline = roc_auc_score(y, forest.predict_proba(x)[:, 1])
    means, stds = [], []
    for feature in range(n_features):
        columns = np.flatnonzero(groups == feature)
        repeats = np.tile(x, (PERMUTATION_REPEATS, 1))
        for r in range(PERMUTATION_REPEATS):
            repeats[r * len(x):(r + 1) * len(x), columns] = x[rng.permutation(len(x))][:, columns]
        scores = forest.predict_proba(repeats)[:, 1].reshape(PERMUTATION_REPEATS, len(x))
        drops = [baseline - roc_auc_score(y, s) for s in scores]
        means.append(np.mean(drops))
        stds.append(np.std(drops))
    return means, stds


def path_contributions(forest, x) -> np.ndarray:
    """Per row and prepared column, how much the splits on that column moved the churn
    fraction along the row's path, averaged over the trees (segflow's forest contributions:
    bias + contributions = probability). Each tree's per-node totals are built level by level
    from the root, then looked up at the rows' leaves."""
    leaves = forest.apply(x)
    total = np.zeros(x.shape)
    for t, estimator in enumerate(forest.estimators_):
        tree = estimator.tree_
        value = tree.value[:, 0, :]
        churn_fraction = value[:, 1] / value.sum(axis=1)
        node_totals = np.zeros((tree.node_count, x.shape[1]))
        frontier = np.array([0])
        while frontier.size:
            split = frontier[tree.children_left[frontier] >= 0]
            for children in (tree.children_left[split], tree.children_right[split]):
                node_totals[children] = node_totals[split]
                node_totals[children, tree.feature[split]] += churn_fraction[children] - churn_fraction[split]
            frontier = np.concatenate([tree.children_left[split], tree.children_right[split]])
        total += node_totals[leaves[:, t]]
    return total / len(forest.estimators_)


def forest_nodes(forest) -> pa.Table:
    """Every node of every tree, with segflow's trees.parquet columns (a leaf: null feature)."""
    parts = []
    for t, estimator in enumerate(forest.estimators_):
        tree = estimator.tree_
        value = tree.value[:, 0, :]
        leaf = tree.children_left < 0
        parts.append(pa.table({
            "tree": pa.array(np.full(tree.node_count, t), pa.uint32()),
            "node": pa.array(np.arange(tree.node_count), pa.uint32()),
            "split_feature": pa.array(np.where(leaf, 0, tree.feature), pa.uint32(), mask=leaf),
            "threshold": np.where(leaf, 0.0, tree.threshold),
            "left_child": pa.array(np.where(leaf, 0, tree.children_left), pa.uint32()),
            "right_child": pa.array(np.where(leaf, 0, tree.children_right), pa.uint32()),
            "churn_fraction": value[:, 1] / value.sum(axis=1),
            "rows": pa.array(tree.n_node_samples, pa.uint32()),
            "weighted_rows": tree.weighted_n_node_samples,
            "impurity": tree.impurity,
        }))
    return pa.concat_tables(parts)


def churn(con, training: pl.DataFrame, to_score: pl.DataFrame, customer_segments: pa.Table, p: Pipeline, evaluation):
    """Returns (churn_scores, churn_by_segment, forest nodes, test ROC AUC of forest and tree)."""
    seed = p.seed
    y = churn_labels(con, training, p.vars["observation_date"])
    train_rows, test_rows = train_test_split(np.arange(len(y)), test_size=TEST_SIZE, stratify=y, random_state=seed)
    train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
    preparation = ChurnPreparation.fit(training[train_rows], p.churn_numeric, p.churn_one_hot)
    x = preparation.transform(training)
    x_train, x_test, y_train, y_test = x[train_rows], x[test_rows], y[train_rows], y[test_rows]
    prepared = preparation.columns()
    groups = np.array([feature for _, feature in prepared])
    declared = p.churn_numeric + p.churn_one_hot

    def new_forest():
        return RandomForestClassifier(
            n_estimators=p.n_trees, max_features="sqrt", min_samples_leaf=p.min_samples_leaf,
            bootstrap=True, max_samples=p.max_samples, oob_score=True, n_jobs=-1, random_state=seed,
        )

    forest = new_forest().fit(x_train, y_train)
    tree = DecisionTreeClassifier(max_depth=BASELINE_MAX_DEPTH, random_state=seed).fit(x_train, y_train)

    # Thresholds on out-of-sample training predictions: the forest's OOB probabilities (rows
    # that were in every bootstrap have none), the tree's stratified out-of-fold predictions.
    oob = forest.oob_decision_function_[:, 1]
    has_oob = ~np.isnan(oob)
    forest_threshold = max_f1_threshold(y_train[has_oob], oob[has_oob])
    folds = min(THRESHOLD_FOLDS, y_train.sum(), len(y_train) - y_train.sum())
    tree_oof = cross_val_predict(
        DecisionTreeClassifier(max_depth=BASELINE_MAX_DEPTH, random_state=seed), x_train, y_train,
        # Sequential: five depth-5 trees take milliseconds, less than starting worker processes.
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba",
    )[:, 1]
    tree_threshold = max_f1_threshold(y_train, tree_oof)

    test_auc = {}
    for name, model, threshold in [("random_forest", forest, forest_threshold), ("decision_tree", tree, tree_threshold)]:
        evaluation.push("churn", name, "train", "threshold", threshold)
        evaluate_split(evaluation, name, "train", y_train, model.predict_proba(x_train)[:, 1], threshold)
        test_scores = model.predict_proba(x_test)[:, 1]
        evaluate_split(evaluation, name, "test", y_test, test_scores, threshold)
        test_auc[name] = float(roc_auc_score(y_test, test_scores))
    evaluation.push("churn", "random_forest", "oob", "oob_score", float(((oob[has_oob] > 0.5) == y_train[has_oob]).mean()))
    evaluation.push("churn", "random_forest", "oob", "roc_auc", roc_auc_score(y_train[has_oob], oob[has_oob]))
    evaluation.push("churn", "random_forest", "oob", "customers", int(has_oob.sum()))
    if p.cv_folds:
        cross_validate(evaluation, new_forest, x_train, y_train, p.cv_folds, seed)
    for (name, _), importance in zip(prepared, forest.feature_importances_):
        evaluation.push("churn", "random_forest", "train", "impurity_importance", importance, feature=name)
    # segflow's default `permutation_rows: 10000`: a seeded sample of larger test splits.
    rows = np.arange(len(x_test))
    if len(rows) > PERMUTATION_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(len(x_test), PERMUTATION_ROWS, replace=False))
    means, stds = grouped_permutation_importance(forest, x_test[rows], y_test[rows], groups, len(declared), seed)
    for name, mean, std in zip(declared, means, stds):
        evaluation.push("churn", "random_forest", "test", "permutation_importance", mean, feature=name)
        evaluation.push("churn", "random_forest", "test", "permutation_importance_std", std, feature=name)

    # Every current customer, on the preparation fitted on the training split.
    x_score = preparation.transform(to_score)
    probability = forest.predict_proba(x_score)[:, 1]
    per_feature = path_contributions(forest, x_score) @ np.eye(len(declared))[groups]
    scores = {
        ID: to_score[ID].to_arrow(),
        "split": pa.array(["score"] * len(probability)),
        "churn_probability": probability,
        "risk_decile": risk_deciles(probability),
        "predicted_churn": probability >= forest_threshold,
        "churned": pa.nulls(len(probability), pa.bool_()),
    }
    # Largest |contribution| first, ties by feature order; a zero explains nothing.
    top = np.lexsort((np.broadcast_to(np.arange(len(declared)), per_feature.shape), -np.abs(per_feature)))[:, :EXPLAIN]
    for i in range(EXPLAIN):
        value = per_feature[np.arange(len(per_feature)), top[:, i]]
        scores[f"top_feature_{i + 1}"] = pa.array(np.array(declared, dtype=object)[top[:, i]], pa.string(), mask=value == 0)
        scores[f"top_contribution_{i + 1}"] = pa.array(value, pa.float64(), mask=value == 0)
    churn_scores = pa.table(scores)

    by_segment = (
        pl.from_arrow(churn_scores.select([ID, "churn_probability", "predicted_churn", "churned"]))
        .join(pl.from_arrow(customer_segments.select([ID, "segment"])), on=ID)
        .group_by("segment")
        .agg(
            pl.len().cast(pl.Int64).alias("customers"),
            pl.col("churn_probability").sum().alias("expected_churners"),
            pl.col("churn_probability").mean().alias("mean_churn_probability"),
            pl.col("predicted_churn").sum().cast(pl.Int64).alias("predicted_churners"),
            (pl.col("predicted_churn").sum() / pl.len()).alias("predicted_churn_rate"),
            pl.col("churned").count().cast(pl.Int64).alias("labelled_customers"),
            pl.col("churned").cast(pl.Float64).mean().alias("observed_churn_rate"),
        )
        .sort("segment")
    )
    for row in by_segment.iter_rows(named=True):
        for metric in ("mean_churn_probability", "predicted_churn_rate", "observed_churn_rate"):
            evaluation.push("churn", "random_forest", "score", metric, row[metric], segment=row["segment"])
    return churn_scores, by_segment.to_arrow(), forest_nodes(forest), test_auc


def cross_validate(evaluation, new_forest, x, y, folds, seed):
    """k-fold metrics of the forest on the training split, per fold, mean and (population) std."""
    per_metric = {}
    for i, (fit_rows, held_out) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y), start=1):
        scores = new_forest().fit(x[fit_rows], y[fit_rows]).predict_proba(x[held_out])[:, 1]
        for name, value in probability_metrics(y[held_out], scores).items():
            evaluation.push("churn", "random_forest", f"cv_fold_{i}", name, value)
            per_metric.setdefault(name, []).append(value)
    for name, values in per_metric.items():
        evaluation.push("churn", "random_forest", "cv_mean", name, np.mean(values))
        evaluation.push("churn", "random_forest", "cv_std", name, np.std(values))


# --- evaluation and write -----------------------------------------------------------------------

EVALUATION_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("stage", pa.string()), ("model", pa.string()), ("split", pa.string()), ("metric", pa.string()),
    ("k", pa.int64()), ("segment", pa.int64()), ("previous_segment", pa.int64()), ("decile", pa.int64()), ("bin", pa.int64()),
    ("threshold", pa.float64()), ("feature", pa.string()), ("value", pa.float64()),
])


@dataclass
class Evaluation:
    """segflow's one long `evaluation` table (src/evaluation.rs)."""

    run_id: str
    rows: list = field(default_factory=list)

    def push(self, stage, model, split, metric, value, **keys):
        self.rows.append({"run_id": self.run_id, "stage": stage, "model": model, "split": split, "metric": metric, **keys,
                          "value": None if value is None else float(value)})

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=EVALUATION_SCHEMA)


def write_table(folder: Path, table: pa.Table, sort_by=(), file_name="part-00000.parquet"):
    """Replaces `folder` with one zstd Parquet file, rows sorted by `sort_by` then every other
    column (segflow's sink), fsynced."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    keys = list(sort_by) + [c for c in table.column_names if c not in sort_by]
    table = table.sort_by([(c, "ascending") for c in keys])
    path = folder / file_name
    pq.write_table(table, path, compression="zstd", compression_level=3, row_group_size=ROWS_PER_ROW_GROUP)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# --- the run ------------------------------------------------------------------------------------


@contextmanager
def timed(stages: dict, stage: str):
    started = time.perf_counter()
    yield
    stages[stage] = time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", choices=sorted(PIPELINES))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--run-date", type=dt.date.fromisoformat, default=dt.datetime.now(dt.timezone.utc).date())
    parser.add_argument("--run-id", default=dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-reference"))
    parser.add_argument("--max-samples", type=float, default=None,
                        help="the forest's max_samples (share of the training rows each tree draws), as compare.sh sets it in the YAML")
    args = parser.parse_args()
    p = PIPELINES[args.pipeline]
    if args.max_samples is not None:
        p = dataclasses.replace(p, max_samples=args.max_samples)
    evaluation = Evaluation(args.run_id)
    stages = {}
    started = time.perf_counter()

    with timed(stages, "read"):
        inputs = p.read(args.data)

    with timed(stages, "clean"):
        clean_rows, rejects, counts = clean(inputs[p.raw_input], p, args.run_id)

    with timed(stages, "features"):
        con = duckdb.connect()
        # Arrow string views: DuckDB reads polars' buffers in place.
        con.register(p.clean_stage, clean_rows.to_arrow(compat_level=pl.CompatLevel.newest()))
        for name, frame in inputs.items():
            if name != p.raw_input:
                con.register(name, frame.to_arrow(compat_level=pl.CompatLevel.newest()))
        create_views(con, p)
        customer_features = con.sql(f'SELECT * FROM "{p.customer_features}" ORDER BY {ID}').to_arrow_table()
        training = con.sql(f'SELECT * FROM "{p.training_table}" ORDER BY {ID}').to_arrow_table()

    with timed(stages, "segment"):
        features = pl.from_arrow(customer_features)
        customer_segments, segment_profiles, chosen = segment(features, p, evaluation)

    with timed(stages, "churn"):
        churn_scores, churn_by_segment, trees, test_auc = churn(con, pl.from_arrow(training), features, customer_segments, p, evaluation)

    with timed(stages, "write"):
        out, partition = args.out, f"run_date={args.run_date.isoformat()}"
        tables = {
            "customer_features": (customer_features, [ID]),
            "rejects": (rejects.to_arrow(), []),
            "data_quality": (data_quality(counts, p.clean_stage, args.run_id), []),
            "customer_segments": (customer_segments, [ID]),
            "segment_profiles": (segment_profiles, ["rank"]),
            "churn_scores": (churn_scores, [ID]),
            "churn_by_segment": (churn_by_segment, ["segment"]),
            "evaluation": (evaluation.table(), []),
        }
        if p.training_output:
            tables[p.training_output] = (training, [ID])
        for name, (table, sort_by) in tables.items():
            write_table(out / name / partition, table, sort_by)
        write_table(out / "models" / "churn" / partition, trees, ["tree", "node"], file_name="trees.parquet")

    result = {
        "pipeline": args.pipeline,
        "stages": stages,
        "total_seconds": time.perf_counter() - started,
        "import_seconds": IMPORT_SECONDS,
        "quality": {
            "k": chosen["k"],
            "inertia": chosen["inertia"],
            "silhouette": chosen["silhouette"],
            "test_roc_auc": test_auc["random_forest"],
            "baseline_test_roc_auc": test_auc["decision_tree"],
        },
        "rows": {
            "rows_in": counts["rows_in"],
            "rows_out": counts["rows_out"],
            "rejected": counts["rows_rejected"],
            "deduplicated": counts["rows_deduplicated"],
            "customers": customer_features.num_rows,
        },
        "versions": {
            "python": platform.python_version(),
            "duckdb": duckdb.__version__,
            "polars": pl.__version__,
            "sklearn": sklearn.__version__,
            "pyarrow": pa.__version__,
        },
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
