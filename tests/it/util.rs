//! A fresh folder per test, the real binary, and small Parquet fixtures the tests write.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use parquet::arrow::ArrowWriter;

pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// What a finished `segflow` command left behind.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox { dir: tempfile::tempdir().expect("a temporary folder") }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `segflow ARGS` with this folder as the working directory.
    pub fn segflow(&self, args: &[&str]) -> Ran {
        segflow_in(self.root(), args)
    }

    /// A tiny transactions table whose features are computed by hand in `core.rs`.
    /// Two customers and a guest; one cancellation; one line after the as-of date.
    pub fn write_tiny_transactions(&self, relative: &str) -> PathBuf {
        let rows: &[(&str, &str, Option<i64>, &str, &str, i64, f64)] = &[
            ("A1", "T01", Some(1), "2024-01-01 10:00:00", "toys", 2, 5.0),
            ("A1", "B01", Some(1), "2024-01-01 10:00:00", "books", 1, 10.0),
            ("B2", "T02", Some(1), "2024-01-11 10:00:00", "toys", 1, 30.0),
            ("C2", "T02", Some(1), "2024-01-12 09:00:00", "toys", -1, 30.0),
            ("D3", "G01", Some(2), "2024-01-20 12:00:00", "games", 3, 2.5),
            ("E4", "G01", None, "2024-01-21 12:00:00", "games", 1, 2.5),
            ("F5", "G01", Some(2), "2024-02-05 12:00:00", "games", 9, 9.0),
        ];
        let ts = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp_micros();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| ts(r.3)))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.4))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.5))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.6))),
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("invoice", DataType::Utf8, false),
            Field::new("stock_code", DataType::Utf8, false),
            Field::new("customer_id", DataType::Int64, true),
            Field::new("invoice_ts", DataType::Timestamp(TimeUnit::Microsecond, None), false),
            Field::new("category", DataType::Utf8, false),
            Field::new("quantity", DataType::Int64, false),
            Field::new("unit_price", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        path
    }
}

pub fn segflow_in(dir: &Path, args: &[&str]) -> Ran {
    Command::new(env!("CARGO_BIN_EXE_segflow"))
        .args(args)
        .current_dir(dir)
        .env_remove("SEGFLOW_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("segflow runs")
        .into()
}

/// [`segflow_in`] with a time limit: `None` when the command was still running after `limit`
/// (it is killed then), so a hang fails its test instead of stalling the whole suite.
pub fn segflow_in_within(dir: &Path, args: &[&str], limit: std::time::Duration) -> Option<Ran> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_segflow"))
        .args(args)
        .current_dir(dir)
        .env_remove("SEGFLOW_LOG")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("segflow starts");
    // Both pipes are drained while the command runs: a full pipe would stall it.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("segflow can be waited for") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().expect("stdout read"), stderr.join().expect("stderr read"));
    status.map(|status| Ran { code: status.code().unwrap_or(-1), stdout, stderr })
}

/// The repository's own folder (pipelines/, sql/, data/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Parquet folder or file, read back, sorted, as a pretty-printed table.
pub fn read_table(path: &Path, order_by: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let ctx = SessionContext::new();
        let path = path.to_string_lossy().to_string();
        ctx.register_parquet("t", &path, ParquetReadOptions::default()).await.unwrap();
        let batches = ctx.sql(&format!("SELECT * FROM t ORDER BY {order_by}")).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    })
}

/// Runs `sql` over Parquet tables (name, file or folder) and returns every value as text
/// (null as an empty string), row by row.
pub fn query(tables: &[(&str, &Path)], sql: &str) -> Vec<Vec<String>> {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::util::display::array_value_to_string;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let ctx = SessionContext::new();
        for (name, path) in tables {
            let path = path.to_string_lossy().to_string();
            ctx.register_parquet(*name, &path, ParquetReadOptions::default()).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        let batches = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")).collect().await.unwrap();
        let mut rows = Vec::new();
        for batch in batches {
            for i in 0..batch.num_rows() {
                rows.push(batch.columns().iter().map(|c| if c.is_null(i) { String::new() } else { array_value_to_string(c, i).unwrap() }).collect());
            }
        }
        rows
    })
}

/// Files under `dir` (recursively), as sorted relative paths.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(base, &path, out);
                } else {
                    out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The last line of stdout parsed as the run summary.
pub fn summary(ran: &Ran) -> serde_json::Value {
    let last = ran.stdout.lines().last().unwrap_or_else(|| panic!("no stdout; stderr:\n{}", ran.stderr));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {last}"))
}

/// Writes a small Parquet file of string, integer and float columns (None = null).
pub enum Col<'a> {
    Str(&'a str, Vec<Option<&'a str>>),
    Int(&'a str, Vec<Option<i64>>),
    Float(&'a str, Vec<Option<f64>>),
}

pub fn write_parquet(path: &Path, columns: Vec<Col<'_>>) {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for column in columns {
        match column {
            Col::Str(name, values) => {
                fields.push(Field::new(name, DataType::Utf8, true));
                arrays.push(Arc::new(StringArray::from(values)));
            }
            Col::Int(name, values) => {
                fields.push(Field::new(name, DataType::Int64, true));
                arrays.push(Arc::new(Int64Array::from(values)));
            }
            Col::Float(name, values) => {
                fields.push(Field::new(name, DataType::Float64, true));
                arrays.push(Arc::new(Float64Array::from(values)));
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
