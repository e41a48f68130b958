"""The clean stage of benches/clean_vs_polars.sh, done with polars: the same casts, null
policies, rules (first failing reason wins), exact dedup, rejects and counts, written to
Parquet (zstd) like segflow's outputs."""
import sys
from pathlib import Path

import polars as pl

source, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
raw = pl.scan_parquet(f"{source}/**/*.parquet", hive_partitioning=True)

typed = raw.with_columns(
    pl.col("invoice").cast(pl.Utf8, strict=False),
    pl.col("customer_id").cast(pl.Int64, strict=False),
    pl.col("invoice_ts").cast(pl.Datetime("us"), strict=False),
    pl.col("quantity").cast(pl.Int64, strict=False),
    pl.col("unit_price").cast(pl.Float64, strict=False),
    pl.col("category").cast(pl.Utf8, strict=False).fill_null("unknown"),
)
reason = (
    pl.when(pl.col("invoice").is_null()).then(pl.lit("null:invoice"))
    .when(pl.col("customer_id").is_null()).then(pl.lit("null:customer_id"))
    .when(pl.col("invoice_ts").is_null()).then(pl.lit("null:invoice_ts"))
    .when(pl.col("quantity").is_null()).then(pl.lit("null:quantity"))
    .when(pl.col("unit_price").is_null()).then(pl.lit("null:unit_price"))
    .when(~(pl.col("quantity") != 0).fill_null(False)).then(pl.lit("nonzero_quantity"))
    .when(~(pl.col("unit_price") > 0).fill_null(False)).then(pl.lit("positive_price"))
    .when(~((~pl.col("invoice").str.starts_with("C")) | (pl.col("quantity") < 0)).fill_null(False)).then(pl.lit("cancellation_is_negative"))
    .otherwise(None)
    .alias("_reject_reason")
)
classified = typed.with_columns(reason).collect()
rejects = classified.filter(pl.col("_reject_reason").is_not_null())
valid = classified.filter(pl.col("_reject_reason").is_null()).drop("_reject_reason")
clean = valid.unique(maintain_order=False)
clean.write_parquet(out / "transactions.parquet", compression="zstd")
rejects.write_parquet(out / "rejects.parquet", compression="zstd")
rows_in, rows_out, rows_rejected = classified.height, clean.height, rejects.height
print(f"polars: rows_in={rows_in} rows_out={rows_out} rows_rejected={rows_rejected} rows_deduplicated={valid.height - clean.height}")
