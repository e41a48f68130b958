//! The errors a command ends with, and the exit code each one means.
//!
//! Exit codes are a contract with schedulers: 0 success, 1 the run failed, 2 the pipeline or
//! the command line is invalid. Never 99: Airflow's BashOperator reads 99 as "skipped".

use crate::diag::Diagnostics;
use crate::run::RunError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file is invalid: every problem found.
    #[error("{0}")]
    Config(Diagnostics),
    /// The command line is invalid.
    #[error("{0}")]
    Usage(String),
    /// The run started and failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// `segflow assign` or `segflow score` failed.
    #[error(transparent)]
    Deploy(#[from] crate::deploy::DeployError),
    /// `report diff` found a metric past a `--fail-on` tolerance.
    #[error("{0}")]
    Gate(String),
    /// Writing demo data failed.
    #[error(transparent)]
    Demo(#[from] crate::demo_data::DemoError),
}

pub const EXIT_OK: u8 = 0;
pub const EXIT_RUN_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage(_) => EXIT_INVALID,
            Error::Deploy(crate::deploy::DeployError::Invalid(_)) => EXIT_INVALID,
            Error::Run(_) | Error::Demo(_) | Error::Deploy(_) | Error::Gate(_) => EXIT_RUN_FAILED,
        }
    }
}
