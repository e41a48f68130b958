//! The config path a user's file takes before anything runs: YAML parse → raw config →
//! validated plan → every stage planned against the real demo inputs (`segflow validate`).
//! Whatever the bytes, the answer is a plan or diagnostics — never a panic, and never a
//! diagnostic that fails to render.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use segflow::engine::{Engine, EngineOptions};
use segflow::plan::{self, PlanOptions};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    /// The file the text pretends to be: `pipelines/fuzz.yaml` in the checkout, so that
    /// relative paths reach the demo data and `sql/` as the real pipelines do.
    file: PathBuf,
    plan_options: PlanOptions,
    engine_options: EngineOptions,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("fuzz/ sits in the checkout");
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime"),
            file: checkout.join("pipelines").join("fuzz.yaml"),
            plan_options: PlanOptions {
                run_date: chrono::NaiveDate::from_ymd_opt(2011, 12, 10).expect("a date"),
                var_overrides: Vec::new(),
                output_root: None,
            },
            // Always local: `engine:` in the text is parsed and validated, but a fuzz run must
            // not start Ballista (the CLI flag overrides the file the same way).
            engine_options: EngineOptions { threads: 1, memory_limit: 256 << 20, spill_dir: None, engine: Engine::Local },
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let fx = fixture();
    let shown = Path::new("pipelines/fuzz.yaml");
    let (raw, diagnostics) = match segflow::config::load_str(text, &fx.file, shown) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            let _ = diagnostics.to_string();
            return;
        }
    };
    let prepared = plan::prepare(&raw, text, shown, diagnostics, &fx.plan_options);
    match fx.runtime.block_on(plan::check(prepared, &fx.engine_options)) {
        Ok(plan) => {
            let _ = plan::Plan::run_date(&plan);
        }
        Err(diagnostics) => {
            let _ = diagnostics.to_string();
        }
    }
});
