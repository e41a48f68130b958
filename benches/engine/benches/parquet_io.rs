//! Parquet I/O on generated transaction lines (`segflow::demo_data`, fixed seed):
//! - `write`: 1M rows × 8 columns (the 7 transaction columns and the `year` partition column,
//!   as DataFusion hands them to the sink) encoded in memory with segflow's
//!   `sink::writer_properties()` (zstd level 3, 262,144-row groups);
//! - `read`: those bytes decoded back into Arrow batches of 8,192 rows;
//! - `datafusion_scan`: segflow's input path, `engine::register_parquet` on the Hive-partitioned
//!   folder `transactions/year=YYYY/`, every row and column collected.
//!
//!   CARGO_TARGET_DIR=~/.cache/segflow/target cargo bench -p segflow-engine-benches --bench parquet_io
//!
//! The data are generated in a temporary folder that is removed afterwards.

use std::path::Path;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use segflow::engine::{self, EngineOptions, InputLocation};
use segflow_engine_benches::{WorkDir, demo_shop, runtime};

/// The first 1M of the demo shop's ≈ 1.04M lines (in a fixed order) are written and read.
const ROWS: usize = 1_000_000;
/// DataFusion's batch size, so the reader hands out what a scan would.
const READ_BATCH_ROWS: usize = 8192;

fn write_parquet(batches: &[RecordBatch]) -> Vec<u8> {
    let schema = batches[0].schema();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), schema, Some(segflow::sink::writer_properties()))
            .expect("parquet writer");
    for batch in batches {
        writer.write(batch).expect("write a batch");
    }
    writer.into_inner().expect("close the writer")
}

fn read_parquet(bytes: &Bytes) -> usize {
    ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .expect("parquet footer")
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .expect("parquet reader")
        .map(|batch| batch.expect("decode a batch").num_rows())
        .sum()
}

fn parquet_io(c: &mut Criterion, work: &Path) {
    let (data, lines) = demo_shop(work);
    let transactions = data.join("transactions");
    let years = std::fs::read_dir(&transactions)
        .expect("list the year folders")
        .count();

    let runtime = runtime();
    let ctx = engine::session(&EngineOptions::default()).expect("session");
    let location = InputLocation::resolve(&transactions).expect("the transactions folder");
    runtime
        .block_on(engine::register_parquet(&ctx, "transactions", &location))
        .expect("register the transactions");
    // Every column in the sort key, so the 1M rows (and so the bytes written) are the same on
    // every run, whatever order the parallel scan returns them in.
    let first_rows = format!(
        "SELECT * FROM transactions ORDER BY year, invoice_ts, invoice, stock_code, customer_id, \
         quantity, unit_price, category LIMIT {ROWS}"
    );
    let batches: Vec<RecordBatch> = runtime
        .block_on(async { ctx.sql(&first_rows).await?.collect().await })
        .expect("read the first rows");
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, ROWS, "the demo data must hold at least {ROWS} lines");
    let columns = batches[0].num_columns();
    let encoded = Bytes::from(write_parquet(&batches));
    eprintln!(
        "parquet_io: {rows} rows x {columns} columns, {} bytes as Parquet (zstd 3); \
         the folder holds {} lines in {years} year partitions",
        encoded.len(),
        lines
    );

    let mut group = c.benchmark_group("parquet_io");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(ROWS as u64));
    let size = format!("1M_rows_x{columns}");
    group.bench_function(BenchmarkId::new("write_zstd3", &size), |b| {
        b.iter(|| write_parquet(&batches))
    });
    group.bench_function(BenchmarkId::new("read", &size), |b| {
        b.iter(|| read_parquet(&encoded))
    });

    group.throughput(Throughput::Elements(lines as u64));
    let scan = format!(
        "{:.2}M_lines_{years}_year_partitions",
        lines as f64 / 1e6
    );
    group.bench_function(BenchmarkId::new("datafusion_scan_hive", scan), |b| {
        b.iter(|| {
            runtime
                .block_on(async { ctx.table("transactions").await?.collect().await })
                .expect("scan the transactions")
        })
    });
    group.finish();
}

fn main() {
    let work = WorkDir::new("parquet_io");
    let mut criterion = Criterion::default().configure_from_args();
    parquet_io(&mut criterion, work.path());
    criterion.final_summary();
}
