#!/usr/bin/env bash
# The warehouse contract, checked with the readers warehouse jobs use: the demo pipeline runs
# for two run dates, then DuckDB (read_parquet('<table>/*/*.parquet', hive_partitioning = true))
# and pyarrow.dataset (hive partitioning) read every output table. Each must see every row the
# manifests count, per run date, with the column types the manifests record, and a run_date
# partition column. Makes its own venv (duckdb, pyarrow) under ~/.cache/segflow.
#
#   tests/warehouse/read_outputs.sh [SEGFLOW_BINARY]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
segflow="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/segflow/target}/debug/segflow}"
venv="${SEGFLOW_CACHE:-$HOME/.cache/segflow}/venv-warehouse"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import duckdb, pyarrow" 2>/dev/null || "$venv/bin/pip" install -q duckdb pyarrow
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for date in 2025-01-01 2025-02-01; do
    "$segflow" run "$repo/pipelines/demo.yaml" --run-date "$date" --output-root "$work/out" >/dev/null 2>"$work/run.log" || { cat "$work/run.log" >&2; exit 1; }
done

"$venv/bin/python" - "$work/out" <<'PY'
import json, pathlib, sys
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

root = pathlib.Path(sys.argv[1])
# Arrow type names as manifests write them → pyarrow types.
ARROW = {"Int64": pa.int64(), "Int32": pa.int32(), "Float64": pa.float64(), "Utf8": pa.string(), "Boolean": pa.bool_(),
         "Timestamp(µs)": pa.timestamp("us"), "Timestamp(Microsecond, None)": pa.timestamp("us"), "Date32": pa.date32()}
problems, checked = [], 0
tables = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name not in ("models", "reports"))
for table in tables:
    manifests = sorted(table.glob("run_date=*/_manifest.json"))
    if not manifests:
        continue
    # A partition with no rows (a first run's empty migration) has nothing for a reader to count.
    expected = {json.load(open(m))["run_date"]: json.load(open(m))["rows"] for m in manifests if json.load(open(m))["rows"] > 0}
    schema = json.load(open(manifests[-1]))["schema"]
    # DuckDB, as a warehouse job would query the table.
    con = duckdb.connect()
    rel = con.sql(f"SELECT run_date, COUNT(*) FROM read_parquet('{table}/*/*.parquet', hive_partitioning = true) GROUP BY run_date ORDER BY run_date")
    seen = {str(d): n for d, n in rel.fetchall()}
    if seen != {d: n for d, n in expected.items()}:
        problems.append(f"{table.name}: DuckDB counts {seen}, manifests {expected}")
    columns = [c[0] for c in con.sql(f"DESCRIBE SELECT * FROM read_parquet('{table}/*/*.parquet', hive_partitioning = true)").fetchall()]
    if "run_date" not in columns:
        problems.append(f"{table.name}: DuckDB sees no run_date column")
    # pyarrow.dataset with Hive partitioning.
    dataset = ds.dataset(table, format="parquet", partitioning="hive")
    counted = dataset.to_table(columns=["run_date"]).group_by("run_date").aggregate([("run_date", "count")]).to_pylist()
    by_date = {str(r["run_date"]): r["run_date_count"] for r in counted}
    if by_date != expected:
        problems.append(f"{table.name}: pyarrow counts {by_date}, manifests {expected}")
    for column in schema:
        want = ARROW.get(column["type"])
        got = dataset.schema.field(column["name"]).type if column["name"] in dataset.schema.names else None
        if got is None:
            problems.append(f"{table.name}.{column['name']}: missing for pyarrow")
        elif want is not None and got != want:
            problems.append(f"{table.name}.{column['name']}: pyarrow reads {got}, the manifest says {column['type']}")
    checked += 1
    print(f"  {table.name:26} {sum(expected.values()):>7} rows over {len(manifests)} run dates, {len(schema)} columns")
if checked < 10:
    problems.append(f"only {checked} tables found under {root}")
if problems:
    sys.exit("warehouse test:\n  " + "\n  ".join(problems))
print(f"warehouse test: {checked} tables read by DuckDB {duckdb.__version__} and pyarrow {pa.__version__}, counts and types as the manifests say")
PY
