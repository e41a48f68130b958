//! segflow's one integration-test binary (one link of the DataFusion stack, not one per file).
//! Each test runs the real `segflow` binary in a fresh temporary folder.

mod bad_inputs;
mod ballista;
mod churn;
mod clean;
mod report;
mod schedule;
mod core;
mod guarantees;
mod segment;
mod util;
mod validate;
