//! segflow: a batch pipeline that turns raw customer data into segments and churn scores.
//!
//! A pipeline file (YAML) declares Parquet inputs, a DAG of stages and the tables to write.
//! The flow is raw config ([`config`]) → validated plan ([`plan`]) → execution ([`run`]),
//! with DataFusion as the one query engine ([`engine`]) and an atomic table writer ([`sink`]).

pub mod cli;
pub mod config;
pub mod demo_data;
pub mod deploy;
pub mod diag;
pub mod engine;
pub mod error;
pub mod evaluation;
pub mod graph;
pub mod lock;
pub mod memory;
/// The model kernels, from their own crate (crates/segflow-ml).
pub use segflow_ml as ml;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod select;
pub mod sink;
pub mod stage;
pub mod vars;
