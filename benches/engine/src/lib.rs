//! What the engine benchmarks share: the generated input, a temporary folder and a runtime.

use std::path::{Path, PathBuf};

use segflow::demo_data::{self, DemoOptions};

pub const SEED: u64 = 7;
/// About 37 lines per customer: ≈ 1.04M lines.
pub const CUSTOMERS: usize = 28_000;

/// A temporary folder, removed when the benchmark ends.
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn new(name: &str) -> WorkDir {
        let dir = std::env::temp_dir().join(format!("segflow-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the work folder");
        WorkDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `segflow demo-data`'s shop (fixed seed, [`CUSTOMERS`] customers) written to `work/data`:
/// the folder and how many transaction lines it holds.
pub fn demo_shop(work: &Path) -> (PathBuf, usize) {
    let options = DemoOptions { customers: CUSTOMERS, seed: SEED, ..DemoOptions::default() };
    let data = work.join("data");
    let demo = demo_data::generate(&data, &options).expect("generate demo data");
    (data, demo.transactions)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}
