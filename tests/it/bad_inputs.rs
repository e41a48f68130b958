//! `tests/bad_inputs/`: one folder per bad input — a pipeline and/or a command line, and the
//! exact exit code and error message expected (`expected.txt`). Every case runs against the
//! same generated data files; none may panic, and none may touch the committed table
//! `out/protected` that every sandbox starts with.
//!
//! `expected.txt`:
//! ```text
//! args: run pipeline.yaml --run-date 2025-01-01 --run-id case
//! setup: symlink out/linked -> ../outside      (optional, repeatable; also `env NAME=VALUE`)
//! exit: 1
//! ---
//! the whole stderr, timestamps, durations and the sandbox path normalised
//! ```
//! `SEGFLOW_BLESS=1 cargo test bad_inputs` rewrites the expectations from what segflow says
//! now (then read the diff before committing it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::churn::{copy_with_sql, write_planted};
use crate::util::{Ran, Sandbox, files_under, repo};

/// The data files every case can read, written once.
fn fixtures() -> Sandbox {
    let dir = Sandbox::new();
    let customers = dir.path("data/customers.parquet");
    write_planted(&customers, 200, 1);
    dir.write_tiny_transactions("data/tx.parquet");
    dir.write("data/not_parquet.parquet", "customer_id,spend\n1,2.5\n");
    let bytes = std::fs::read(&customers).unwrap();
    std::fs::write(dir.path("data/truncated.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let derived: &[(&str, &str)] = &[
        ("few", "SELECT * FROM c WHERE customer_id <= 5"),
        ("empty", "SELECT * FROM c WHERE false"),
        ("nan", "SELECT customer_id, CASE WHEN customer_id = 3 THEN CAST('NaN' AS DOUBLE) ELSE recency_days END AS recency_days, spend, noise, plan, churned FROM c"),
        ("inf", "SELECT customer_id, CASE WHEN customer_id = 3 THEN CAST('Infinity' AS DOUBLE) ELSE recency_days END AS recency_days, spend, noise, plan, churned FROM c"),
        ("huge", "SELECT customer_id, CASE WHEN customer_id = 3 THEN 1e308 WHEN customer_id = 4 THEN -1e308 ELSE recency_days END AS recency_days, spend, noise, plan, churned FROM c"),
        ("all_null", "SELECT customer_id, recency_days, CAST(NULL AS DOUBLE) AS spend, noise, plan, churned FROM c"),
        ("dup_ids", "SELECT customer_id % 50 + 1 AS customer_id, recency_days, spend, noise, plan, churned FROM c"),
        ("null_ids", "SELECT CASE WHEN customer_id = 5 THEN NULL ELSE customer_id END AS customer_id, recency_days, spend, noise, plan, churned FROM c"),
        ("one_class", "SELECT customer_id, recency_days, spend, noise, plan, CAST(0 AS BIGINT) AS churned FROM c"),
        ("text_label", "SELECT customer_id, recency_days, spend, noise, plan, CASE WHEN churned = 1 THEN 'yes' ELSE 'no' END AS churned FROM c"),
        ("three_classes", "SELECT customer_id, recency_days, spend, noise, plan, customer_id % 3 AS churned FROM c"),
        ("null_labels", "SELECT customer_id, recency_days, spend, noise, plan, CASE WHEN customer_id = 7 THEN NULL ELSE churned END AS churned FROM c"),
    ];
    for (name, sql) in derived {
        copy_with_sql(&customers, &dir.path(&format!("data/{name}.parquet")), "c", sql);
    }
    dir
}

/// The committed table no case may touch.
fn protect(sandbox: &Sandbox) -> Vec<(String, Vec<u8>)> {
    let partition = sandbox.path("out/protected/run_date=2025-01-01");
    std::fs::create_dir_all(&partition).unwrap();
    std::fs::copy(sandbox.path("data/customers.parquet"), partition.join("part-00000-old.parquet")).unwrap();
    std::fs::write(partition.join("_manifest.json"), "{\"table\": \"protected\"}").unwrap();
    std::fs::write(partition.join("_SUCCESS"), "").unwrap();
    snapshot(&sandbox.path("out/protected"))
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(dir).into_iter().map(|f| (f.clone(), std::fs::read(dir.join(&f)).unwrap())).collect()
}

fn copy_tree(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(&file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&file), target).unwrap();
    }
}

/// Timestamps, durations, resident memory and the sandbox's path out of stderr.
fn normalise(stderr: &str, sandbox: &Path) -> String {
    let mut text = stderr.to_string();
    for root in [sandbox.canonicalize().unwrap_or_else(|_| sandbox.to_path_buf()), sandbox.to_path_buf()] {
        text = text.replace(&root.display().to_string(), "<sandbox>");
    }
    let mut out = String::new();
    for line in text.lines() {
        // `2026-11-24T01:07:28.349179Z  INFO message` → `INFO message`
        let line = match line.find("Z ") {
            Some(at) if at < 32 && line.as_bytes().first().is_some_and(u8::is_ascii_digit) => &line[at + 2..],
            _ => line,
        };
        let mut cleaned = String::new();
        let mut rest = line;
        while let Some(at) = rest.find("seconds=") {
            cleaned.push_str(&rest[..at + 8]);
            rest = &rest[at + 8..];
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            cleaned.push_str("<s>");
            rest = &rest[end..];
        }
        cleaned.push_str(rest);
        // Resident memory varies by machine like durations do; the expected files leave it out.
        if let Some(at) = cleaned.find(" resident_mib=") {
            let digits = cleaned[at + 14..].find(|c: char| !c.is_ascii_digit()).map_or(cleaned.len(), |n| at + 14 + n);
            cleaned.replace_range(at..digits, "");
        }
        out.push_str(cleaned.trim_start());
        out.push('\n');
    }
    out
}

struct Case {
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    setup: Vec<String>,
    exit: Option<i32>,
    stderr: String,
}

fn read_case(dir: &Path) -> Case {
    let text = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let (head, stderr) = text.split_once("---\n").unwrap_or((&text, ""));
    let mut case = Case { name: dir.file_name().unwrap().to_string_lossy().into_owned(), dir: dir.to_path_buf(), args: Vec::new(), setup: Vec::new(), exit: None, stderr: stderr.to_string() };
    for line in head.lines() {
        match line.split_once(": ") {
            Some(("args", a)) => case.args = a.split_whitespace().map(str::to_string).collect(),
            Some(("setup", s)) => case.setup.push(s.to_string()),
            Some(("exit", e)) => case.exit = e.trim().parse().ok(),
            _ => {}
        }
    }
    case
}

fn run_case(case: &Case, fixtures: &Path) -> Result<(), String> {
    let sandbox = Sandbox::new();
    copy_tree(fixtures, sandbox.root());
    copy_tree(&case.dir, sandbox.root());
    let protected = protect(&sandbox);
    let mut command = Command::new(env!("CARGO_BIN_EXE_segflow"));
    command.args(&case.args).current_dir(sandbox.root()).env_remove("SEGFLOW_LOG").env("NO_COLOR", "1").env_remove("SEGFLOW_BAD_INPUTS_UNSET");
    for step in &case.setup {
        if let Some(link) = step.strip_prefix("symlink ") {
            let (at, to) = link.split_once(" -> ").ok_or("setup: symlink A -> B")?;
            let path = sandbox.path(at);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::create_dir_all(path.parent().unwrap().join(to)).unwrap();
            std::os::unix::fs::symlink(to, &path).unwrap();
        } else if let Some(assignment) = step.strip_prefix("env ") {
            let (k, v) = assignment.split_once('=').ok_or("setup: env NAME=VALUE")?;
            command.env(k, v.replace("\\n", "\n"));
        }
    }
    let ran: Ran = command.output().unwrap().into();
    let stderr = normalise(&ran.stderr, sandbox.root());
    if ran.stderr.contains("panicked") || ran.code == 101 {
        return Err(format!("panicked:\n{}", ran.stderr));
    }
    if snapshot(&sandbox.path("out/protected")) != protected {
        return Err("the committed table out/protected changed".to_string());
    }
    if let Some(outside) = ["outside", "out/outside"].iter().map(|p| sandbox.path(p)).find(|p| p.exists() && !files_under(p).is_empty()) {
        return Err(format!("files written outside the output root: {:?}", files_under(&outside)));
    }
    if std::env::var_os("SEGFLOW_BLESS").is_some() {
        let head: String = std::iter::once(format!("args: {}\n", case.args.join(" "))).chain(case.setup.iter().map(|s| format!("setup: {s}\n"))).collect();
        std::fs::write(case.dir.join("expected.txt"), format!("{head}exit: {}\n---\n{stderr}", ran.code)).unwrap();
        return Ok(());
    }
    if case.exit != Some(ran.code) {
        return Err(format!("exit {} (expected {:?}); stderr:\n{stderr}", ran.code, case.exit));
    }
    if stderr != case.stderr {
        return Err(format!("stderr differs.\n--- expected\n{}--- actual\n{stderr}", case.stderr));
    }
    Ok(())
}

#[test]
fn every_bad_input_is_refused_with_its_message_and_nothing_panics_or_is_touched() {
    let fixtures = fixtures();
    let root = repo().join("tests/bad_inputs");
    let mut cases: Vec<Case> = std::fs::read_dir(&root).unwrap().flatten().filter(|e| e.path().is_dir()).map(|e| read_case(&e.path())).collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    // Four at a time: each case is a process of its own.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .chunks(cases.len().div_ceil(4))
            .map(|chunk| scope.spawn(|| chunk.iter().filter_map(|c| run_case(c, fixtures.root()).err().map(|e| format!("{}: {e}", c.name))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
    // Every case is refused: none exits 0.
    if std::env::var_os("SEGFLOW_BLESS").is_none() {
        let accepted: Vec<&str> = cases.iter().filter(|c| c.exit == Some(0)).map(|c| c.name.as_str()).collect();
        assert!(accepted.is_empty(), "bad inputs accepted: {accepted:?}");
    }
}
