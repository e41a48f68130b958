//! `segflow demo-data`: deterministic, realistic retail data with planted structure.
//!
//! Customers belong to one of five hidden behaviours (champions, loyal regulars, big
//! spenders, occasional buyers, and lapsing customers who stop buying partway through), so a
//! segmentation has something to find and a churn model has a signal. On purpose, the data
//! is also dirty the way real order data is: cancellations (invoices `C…` with negative
//! quantities), exact duplicate lines, guest orders without a customer id, lines without a
//! category, and invalid lines (zero quantity, non-positive price).
//!
//! Layout written under OUT:
//! - `customers.parquet`: customer_id, age_band, region, signup_date, acquisition_channel
//!   (and the hidden `planted_segment`, for checking a segmentation, never a feature)
//! - `transactions/year=YYYY/part-00000.parquet`: invoice, stock_code, customer_id,
//!   invoice_ts, category, quantity, unit_price — a Hive-partitioned folder.
//!
//! The same seed and size give byte-identical files. Rows are generated and written in
//! chunks, so tens of millions of rows need little memory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{ArrayRef, Date32Builder, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::vars::days_since_epoch;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub customers: usize,
    pub seed: u64,
    /// First day of trading; data covers `months` months from here.
    pub start: NaiveDate,
    pub months: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            customers: 1_500,
            seed: 42,
            start: NaiveDate::from_ymd_opt(2023, 1, 1).expect("a valid date"),
            months: 24,
        }
    }
}

/// What was written, for the log and for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    pub customers: usize,
    pub transactions: usize,
    pub cancellation_lines: usize,
    pub duplicate_lines: usize,
    pub guest_lines: usize,
    pub invalid_lines: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("--customers must be at least 1")]
    NoCustomers,
}

#[derive(Debug, Clone, Copy)]
struct Behaviour {
    name: &'static str,
    share: f64,
    orders_per_month: f64,
    basket_value: f64,
    /// Preferred category indexes (into CATEGORIES), drawn three times as often.
    favourites: &'static [usize],
    lapses: bool,
}

const BEHAVIOURS: &[Behaviour] = &[
    Behaviour { name: "champion", share: 0.12, orders_per_month: 2.2, basket_value: 130.0, favourites: &[2, 3], lapses: false },
    Behaviour { name: "loyal", share: 0.25, orders_per_month: 1.0, basket_value: 60.0, favourites: &[0, 1], lapses: false },
    Behaviour { name: "big_spender", share: 0.10, orders_per_month: 0.3, basket_value: 420.0, favourites: &[2, 6], lapses: false },
    Behaviour { name: "occasional", share: 0.30, orders_per_month: 0.18, basket_value: 38.0, favourites: &[5, 7], lapses: false },
    Behaviour { name: "lapsing", share: 0.23, orders_per_month: 0.9, basket_value: 70.0, favourites: &[3, 4], lapses: true },
];

const CATEGORIES: &[(&str, f64)] = &[
    ("grocery", 4.0),
    ("home", 18.0),
    ("electronics", 65.0),
    ("fashion", 28.0),
    ("beauty", 14.0),
    ("toys", 16.0),
    ("sports", 35.0),
    ("books", 11.0),
];
const AGE_BANDS: &[&str] = &["18-24", "25-34", "35-44", "45-54", "55-64", "65+"];
const REGIONS: &[&str] = &["north", "south", "east", "west", "central"];
const CHANNELS: &[&str] = &["organic", "paid_search", "social", "referral", "email"];

/// Rows buffered per partition before a batch is written.
const BATCH_ROWS: usize = 262_144;

pub fn transactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("invoice", DataType::Utf8, false),
        Field::new("stock_code", DataType::Utf8, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("invoice_ts", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("category", DataType::Utf8, true),
        Field::new("quantity", DataType::Int64, false),
        Field::new("unit_price", DataType::Float64, false),
    ]))
}

pub fn customers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        Field::new("age_band", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("signup_date", DataType::Date32, false),
        Field::new("acquisition_channel", DataType::Utf8, false),
        Field::new("planted_segment", DataType::Utf8, false),
    ]))
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(1 << 20))
        .build()
}

/// One transaction line before it is written.
struct Line {
    invoice: String,
    stock_code: String,
    customer_id: Option<i64>,
    ts: NaiveDateTime,
    category: Option<&'static str>,
    quantity: i64,
    unit_price: f64,
}

#[derive(Default)]
struct LineBuffer {
    invoice: StringBuilder,
    stock_code: StringBuilder,
    customer_id: Int64Builder,
    ts: TimestampMicrosecondBuilder,
    category: StringBuilder,
    quantity: Int64Builder,
    unit_price: Float64Builder,
    rows: usize,
}

impl LineBuffer {
    fn push(&mut self, line: &Line) {
        self.invoice.append_value(&line.invoice);
        self.stock_code.append_value(&line.stock_code);
        self.customer_id.append_option(line.customer_id);
        self.ts.append_value(line.ts.and_utc().timestamp_micros());
        self.category.append_option(line.category);
        self.quantity.append_value(line.quantity);
        self.unit_price.append_value(line.unit_price);
        self.rows += 1;
    }

    fn take(&mut self) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.invoice.finish()),
            Arc::new(self.stock_code.finish()),
            Arc::new(self.customer_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.quantity.finish()),
            Arc::new(self.unit_price.finish()),
        ];
        RecordBatch::try_new(transactions_schema(), columns)
    }
}

/// Open Parquet writers, one per `year=` partition.
struct PartitionedWriter {
    root: PathBuf,
    writers: BTreeMap<i32, (ArrowWriter<File>, LineBuffer, PathBuf)>,
}

impl PartitionedWriter {
    fn push(&mut self, year: i32, line: &Line) -> Result<(), DemoError> {
        if !self.writers.contains_key(&year) {
            let dir = self.root.join(format!("year={year}"));
            fs::create_dir_all(&dir).map_err(|source| DemoError::Io { action: "create", path: dir.clone(), source })?;
            let path = dir.join("part-00000.parquet");
            let file = File::create(&path).map_err(|source| DemoError::Io { action: "create", path: path.clone(), source })?;
            let writer = ArrowWriter::try_new(file, transactions_schema(), Some(properties()))
                .map_err(|e| DemoError::Parquet { path: path.clone(), message: e.to_string() })?;
            self.writers.insert(year, (writer, LineBuffer::default(), path));
        }
        let Some((writer, buffer, path)) = self.writers.get_mut(&year) else { unreachable!("inserted above") };
        buffer.push(line);
        if buffer.rows >= BATCH_ROWS {
            let batch = buffer.take().map_err(|e| DemoError::Parquet { path: path.clone(), message: e.to_string() })?;
            writer.write(&batch).map_err(|e| DemoError::Parquet { path: path.clone(), message: e.to_string() })?;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), DemoError> {
        for (_, (mut writer, mut buffer, path)) in self.writers {
            if buffer.rows > 0 {
                let batch = buffer.take().map_err(|e| DemoError::Parquet { path: path.clone(), message: e.to_string() })?;
                writer.write(&batch).map_err(|e| DemoError::Parquet { path: path.clone(), message: e.to_string() })?;
            }
            writer.close().map_err(|e| DemoError::Parquet { path: path.clone(), message: e.to_string() })?;
        }
        Ok(())
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A standard normal draw (Box–Muller): enough for prices and basket sizes, and no extra crate.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn round_cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Writes the demo data set under `out`, replacing an earlier one there.
pub fn generate(out: &Path, options: &DemoOptions) -> Result<DemoSummary, DemoError> {
    if options.customers == 0 {
        return Err(DemoError::NoCustomers);
    }
    let transactions_dir = out.join("transactions");
    if transactions_dir.exists() {
        fs::remove_dir_all(&transactions_dir).map_err(|source| DemoError::Io { action: "remove", path: transactions_dir.clone(), source })?;
    }
    fs::create_dir_all(out).map_err(|source| DemoError::Io { action: "create", path: out.to_path_buf(), source })?;

    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let start = options.start.and_hms_opt(0, 0, 0).expect("midnight exists");
    let days = (f64::from(options.months) * 30.44).round() as i64;
    let end = start + Duration::days(days);
    let mut summary = DemoSummary { customers: options.customers, transactions: 0, cancellation_lines: 0, duplicate_lines: 0, guest_lines: 0, invalid_lines: 0 };

    let mut customers = CustomerBuffer::default();
    let mut writer = PartitionedWriter { root: transactions_dir, writers: BTreeMap::new() };
    let mut invoice_counter: u64 = 500_000;
    let cumulative: Vec<f64> = BEHAVIOURS.iter().scan(0.0, |acc, b| { *acc += b.share; Some(*acc) }).collect();

    for index in 0..options.customers {
        let customer_id = 10_000 + index as i64;
        let draw: f64 = rng.random::<f64>() * cumulative[cumulative.len() - 1];
        let behaviour = BEHAVIOURS[cumulative.iter().position(|c| draw < *c).unwrap_or(BEHAVIOURS.len() - 1)];
        // Signed up any time from two years before the window to a month before its end.
        let signup = start - Duration::days(730) + Duration::days(rng.random_range(0..(730 + days - 30)));
        customers.push(customer_id, *pick(&mut rng, AGE_BANDS), *pick(&mut rng, REGIONS), signup.date(), *pick(&mut rng, CHANNELS), behaviour.name);

        let active_from = signup.max(start);
        // Lapsing customers stop somewhere between a quarter and nine tenths of the way in.
        let active_until = if behaviour.lapses {
            let fraction = rng.random_range(0.25..0.9);
            start + Duration::days((days as f64 * fraction) as i64)
        } else {
            end
        };
        // Customers of one behaviour still differ: a personal rate and spend around the type's.
        let rate = behaviour.orders_per_month * (0.35 * normal(&mut rng)).exp() / 30.44;
        let spend = behaviour.basket_value * (0.3 * normal(&mut rng)).exp();
        let mut t = active_from;
        loop {
            let wait_days = -(rng.random::<f64>().max(1e-12)).ln() / rate.max(1e-6);
            t += Duration::seconds((wait_days * 86_400.0) as i64);
            if t >= active_until {
                break;
            }
            // Shops are open from 8 to 20.
            let ts = t.date().and_hms_opt(8, 0, 0).expect("8:00 exists") + Duration::seconds(rng.random_range(0..12 * 3600));
            invoice_counter += 1;
            let guest = rng.random::<f64>() < 0.015;
            let order_customer = if guest { None } else { Some(customer_id) };
            let n_lines = 1 + (rng.random::<f64>() * 4.0 * (spend / 80.0).sqrt().min(2.0)) as usize;
            let mut order_lines = Vec::with_capacity(n_lines);
            for _ in 0..n_lines {
                let category_index = if rng.random::<f64>() < 0.55 { *pick(&mut rng, behaviour.favourites) } else { rng.random_range(0..CATEGORIES.len()) };
                let (category, price_level) = CATEGORIES[category_index];
                let unit_price = round_cents(price_level * (0.4 * normal(&mut rng)).exp() * (spend / 80.0).powf(0.3));
                let target_quantity = (spend / n_lines as f64 / unit_price.max(0.5)).max(1.0);
                let quantity = (target_quantity * (0.5 * normal(&mut rng)).exp()).round().clamp(1.0, 48.0) as i64;
                let mut line = Line {
                    invoice: format!("{invoice_counter}"),
                    stock_code: format!("{}{:03}", &category[..2].to_uppercase(), rng.random_range(0..120)),
                    customer_id: order_customer,
                    ts,
                    category: if rng.random::<f64>() < 0.005 { None } else { Some(category) },
                    quantity,
                    unit_price,
                };
                if rng.random::<f64>() < 0.002 {
                    if rng.random::<bool>() { line.quantity = 0 } else { line.unit_price = -line.unit_price.abs() }
                    summary.invalid_lines += 1;
                }
                order_lines.push(line);
            }
            let year = ts.date().format("%Y").to_string().parse::<i32>().unwrap_or(0);
            for line in &order_lines {
                writer.push(year, line)?;
                summary.transactions += 1;
                if guest {
                    summary.guest_lines += 1;
                }
                if rng.random::<f64>() < 0.01 {
                    writer.push(year, line)?;
                    summary.transactions += 1;
                    summary.duplicate_lines += 1;
                }
            }
            // A few orders are cancelled (partly) a few days later, as a "C" invoice.
            if rng.random::<f64>() < 0.025 {
                let cancel_ts = ts + Duration::hours(rng.random_range(2..240));
                if cancel_ts < end {
                    let cancel_year = cancel_ts.date().format("%Y").to_string().parse::<i32>().unwrap_or(0);
                    for line in order_lines.iter().filter(|_| rng.random::<f64>() < 0.7) {
                        let cancel = Line { invoice: format!("C{invoice_counter}"), quantity: -line.quantity, ts: cancel_ts, ..clone_line(line) };
                        writer.push(cancel_year, &cancel)?;
                        summary.transactions += 1;
                        summary.cancellation_lines += 1;
                    }
                }
            }
        }
    }
    writer.finish()?;
    let customers_path = out.join("customers.parquet");
    customers.write(&customers_path)?;
    Ok(summary)
}

fn clone_line(line: &Line) -> Line {
    Line {
        invoice: line.invoice.clone(),
        stock_code: line.stock_code.clone(),
        customer_id: line.customer_id,
        ts: line.ts,
        category: line.category,
        quantity: line.quantity,
        unit_price: line.unit_price,
    }
}

#[derive(Default)]
struct CustomerBuffer {
    customer_id: Int64Builder,
    age_band: StringBuilder,
    region: StringBuilder,
    signup_date: Date32Builder,
    channel: StringBuilder,
    planted: StringBuilder,
}

impl CustomerBuffer {
    fn push(&mut self, id: i64, age_band: &str, region: &str, signup: NaiveDate, channel: &str, planted: &str) {
        self.customer_id.append_value(id);
        self.age_band.append_value(age_band);
        self.region.append_value(region);
        self.signup_date.append_value(days_since_epoch(signup));
        self.channel.append_value(channel);
        self.planted.append_value(planted);
    }

    fn write(mut self, path: &Path) -> Result<(), DemoError> {
        let err = |e: &dyn std::fmt::Display| DemoError::Parquet { path: path.to_path_buf(), message: e.to_string() };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.customer_id.finish()),
            Arc::new(self.age_band.finish()),
            Arc::new(self.region.finish()),
            Arc::new(self.signup_date.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.planted.finish()),
        ];
        let batch = RecordBatch::try_new(customers_schema(), columns).map_err(|e| err(&e))?;
        let file = File::create(path).map_err(|source| DemoError::Io { action: "create", path: path.to_path_buf(), source })?;
        let mut writer = ArrowWriter::try_new(file, customers_schema(), Some(properties())).map_err(|e| err(&e))?;
        writer.write(&batch).map_err(|e| err(&e))?;
        writer.close().map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DemoOptions {
        DemoOptions { customers: 60, seed: 7, ..DemoOptions::default() }
    }

    #[test]
    fn the_same_seed_writes_the_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(a.path(), &small()).unwrap();
        generate(b.path(), &small()).unwrap();
        for file in ["customers.parquet", "transactions/year=2023/part-00000.parquet", "transactions/year=2024/part-00000.parquet"] {
            assert_eq!(fs::read(a.path().join(file)).unwrap(), fs::read(b.path().join(file)).unwrap(), "{file}");
        }
    }

    #[test]
    fn the_data_is_dirty_on_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(dir.path(), &DemoOptions { customers: 300, ..small() }).unwrap();
        assert!(summary.cancellation_lines > 0, "{summary:?}");
        assert!(summary.duplicate_lines > 0, "{summary:?}");
        assert!(summary.guest_lines > 0, "{summary:?}");
        assert!(summary.transactions > 300 * 5, "{summary:?}");
    }
}
