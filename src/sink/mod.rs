//! Writing output tables that readers can trust.
//!
//! The commit protocol, as a state machine for one table partition (or one unpartitioned
//! table folder):
//!
//! 1. **Staging.** Parquet files are written under
//!    `<root>/_segflow/staging/<run>/<table>/[run_date=D/]`, named
//!    `part-NNNNN-<run>.parquet`, each fsynced; then `_manifest.json` (rows, schema, files, run
//!    id, schema version) and an empty `_SUCCESS` beside them. Nothing a reader looks at has
//!    changed yet. A failed run removes its staging folder; one killed here leaves it under
//!    `_segflow/staging/<run>/`, where no reader of a table looks.
//! 2. **Swap.** One `renameat2(RENAME_EXCHANGE)` swaps the staging folder with the live
//!    `<root>/<table>/[run_date=D/]` folder (or one `rename` when there is none yet). Readers see
//!    the old partition or the new one, whole, never a mix: data, `_manifest.json` and
//!    `_SUCCESS` appear in the same step. On a filesystem without RENAME_EXCHANGE the old
//!    folder is first renamed aside, leaving a moment where the partition is absent (never
//!    half-written).
//! 3. **Cleanup.** The old files, now in staging, are deleted.
//!
//! A rerun for the same run date therefore replaces the partition; it never appends. The
//! staging area lives in `_segflow/`, outside every table folder, so a glob such as
//! `<table>/*/*.parquet` never sees a file in progress.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

/// Rows per Parquet file. Files roll over at exactly this count, so the same rows always make
/// the same files, whatever the batch sizes upstream.
pub const ROWS_PER_FILE: usize = 4_000_000;
/// Rows per row group.
pub(crate) const ROWS_PER_ROW_GROUP: usize = 262_144;

/// The folder of segflow's own bookkeeping under an output root: staging, run records, locks.
pub const SEGFLOW_DIR: &str = "_segflow";
/// Each partition's manifest file.
pub const MANIFEST_FILE: &str = "_manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write table `{table}`: {action} {path}: {source}")]
    Io { table: String, action: &'static str, path: PathBuf, source: io::Error },
    #[error("cannot write table `{table}`: {message}")]
    Parquet { table: String, message: String },
    #[error("cannot compute table `{table}`: {message}")]
    Compute { table: String, message: String },
    #[error("cannot commit table `{table}`: {path} exists and is not a folder")]
    NotAFolder { table: String, path: PathBuf },
    #[error("refusing to write table `{table}`: {path} leads to {target}, outside the output root {root}; a table folder must stay under the output root (remove the link)")]
    Escapes { table: String, path: PathBuf, target: PathBuf, root: PathBuf },
}

/// Refuses a table whose folder (or partition folder) resolves outside the output root: a
/// symbolic link planted there would otherwise receive the run's files, or have a folder
/// outside replaced by the swap.
fn confined(target: &TableTarget) -> Result<(), SinkError> {
    let Ok(root) = target.root.canonicalize() else { return Ok(()) };
    let table_dir = target.root.join(&target.table);
    for path in [Some(table_dir.clone()), target.partition.as_ref().map(|p| table_dir.join(p))].into_iter().flatten() {
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let resolved = path.canonicalize().unwrap_or_else(|_| path.clone());
        if !resolved.starts_with(&root) {
            return Err(SinkError::Escapes { table: target.table.clone(), path, target: resolved, root: root.clone() });
        }
    }
    Ok(())
}

/// What `_manifest.json` records about one committed partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub table: String,
    pub schema_version: u32,
    /// `run_date=YYYY-MM-DD`, or absent for an unpartitioned table.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub partition: Option<String>,
    pub run_id: String,
    pub run_date: String,
    pub rows: u64,
    pub files: Vec<ManifestFile>,
    pub schema: Vec<ManifestColumn>,
    pub writer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// Where a table goes and under which run.
#[derive(Debug, Clone)]
pub struct TableTarget {
    pub root: PathBuf,
    pub table: String,
    /// The Hive partition folder, e.g. `run_date=2024-05-01`, or `None` for one folder.
    pub partition: Option<String>,
    pub run_id: String,
    pub run_date: String,
    pub schema_version: u32,
}

impl TableTarget {
    /// The live folder readers see.
    pub fn live_dir(&self) -> PathBuf {
        let table_dir = self.root.join(&self.table);
        match &self.partition {
            Some(p) => table_dir.join(p),
            None => table_dir,
        }
    }

    fn staging_dir(&self) -> PathBuf {
        let dir = staging_root(&self.root, &self.run_id).join(&self.table);
        match &self.partition {
            Some(p) => dir.join(p),
            None => dir,
        }
    }

    fn io(&self, action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SinkError + '_ {
        let path = path.to_path_buf();
        move |source| SinkError::Io { table: self.table.clone(), action, path, source }
    }
}

/// The staging folder of one run.
pub fn staging_root(root: &Path, run_id: &str) -> PathBuf {
    root.join(SEGFLOW_DIR).join("staging").join(file_safe(run_id))
}

/// A run id as it may appear in a file name: Airflow's run ids hold `:` and `+`, which some
/// readers of Hive tables refuse in paths.
pub fn file_safe(run_id: &str) -> String {
    run_id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// A table written to staging and ready for [`commit`].
#[derive(Debug)]
pub struct StagedTable {
    pub target: TableTarget,
    pub manifest: Manifest,
    staging_dir: PathBuf,
}

/// Step 1: runs `frame` and writes its rows to the staging folder with a manifest.
pub async fn stage(target: TableTarget, frame: DataFrame) -> Result<StagedTable, SinkError> {
    let schema: SchemaRef = frame.schema().inner().clone();
    stage_as(target, frame, schema).await
}

/// [`stage`], writing the rows under `schema`: the same columns, where the query could not
/// know what the table promises (a column that is never null, say, computed on a cluster from
/// nullable input). A row that breaks the promise fails the table.
pub async fn stage_as(target: TableTarget, frame: DataFrame, schema: SchemaRef) -> Result<StagedTable, SinkError> {
    confined(&target)?;
    let staging_dir = empty_staging_dir(&target)?;

    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| SinkError::Compute { table: target.table.clone(), message: crate::engine::describe_datafusion_error(&e) })?;
    let mut writer = PartWriter::new(&target, &staging_dir, schema.clone());
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| SinkError::Compute { table: target.table.clone(), message: crate::engine::describe_datafusion_error(&e) })?;
        let batch = if batch.schema() == schema { batch } else { RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| SinkError::Compute { table: target.table.clone(), message: e.to_string() })? };
        writer.write(&batch)?;
    }
    let files = writer.finish()?;
    let columns = schema
        .fields()
        .iter()
        .map(|f| ManifestColumn { name: f.name().clone(), data_type: f.data_type().to_string(), nullable: f.is_nullable() })
        .collect();
    seal(target, staging_dir, files, columns)
}

/// The content of one file of a folder that is not a table ([`stage_files`]).
pub enum FileContent {
    /// Held in memory: a model's JSON, a report.
    Bytes(Vec<u8>),
    /// A complete file its stage already wrote (to the run's scratch folder), moved into the
    /// staging folder. A forest's trees are hundreds of megabytes for millions of customers:
    /// written as they are read from the model, never built in memory beside it.
    Written(PathBuf),
}

impl From<Vec<u8>> for FileContent {
    fn from(bytes: Vec<u8>) -> Self {
        FileContent::Bytes(bytes)
    }
}

/// Step 1 for a folder of files that is not a table (a saved model): writes `files` (name,
/// content) to the staging folder with a manifest, to be committed like a table partition.
pub fn stage_files(target: TableTarget, files: Vec<(String, FileContent)>) -> Result<StagedTable, SinkError> {
    confined(&target)?;
    let staging_dir = empty_staging_dir(&target)?;
    let mut written = Vec::new();
    for (name, content) in files {
        let path = staging_dir.join(&name);
        let bytes = match content {
            FileContent::Bytes(bytes) => {
                write_synced(&path, &bytes).map_err(target.io("write", &path))?;
                bytes.len() as u64
            }
            FileContent::Written(source) => move_synced(&source, &path).map_err(target.io("move", &source))?,
        };
        written.push(ManifestFile { name, rows: 0, bytes });
    }
    seal(target, staging_dir, written, Vec::new())
}

/// Moves a written file to `to` (a copy when they are on different file systems) and syncs it;
/// returns its size.
fn move_synced(from: &Path, to: &Path) -> io::Result<u64> {
    if let Err(rename) = fs::rename(from, to) {
        if rename.raw_os_error() != Some(libc::EXDEV) {
            return Err(rename);
        }
        fs::copy(from, to)?;
        fs::remove_file(from)?;
    }
    let file = File::open(to)?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// The target's staging folder, emptied of anything an earlier attempt left there.
fn empty_staging_dir(target: &TableTarget) -> Result<PathBuf, SinkError> {
    let staging_dir = target.staging_dir();
    if staging_dir.exists() {
        fs::remove_dir_all(&staging_dir).map_err(target.io("clear old staging folder", &staging_dir))?;
    }
    fs::create_dir_all(&staging_dir).map_err(target.io("create staging folder", &staging_dir))?;
    Ok(staging_dir)
}

/// Ends step 1: `_manifest.json` and `_SUCCESS` beside the staged files, all synced.
fn seal(target: TableTarget, staging_dir: PathBuf, files: Vec<ManifestFile>, schema: Vec<ManifestColumn>) -> Result<StagedTable, SinkError> {
    let manifest = Manifest {
        table: target.table.clone(),
        schema_version: target.schema_version,
        partition: target.partition.clone(),
        run_id: target.run_id.clone(),
        run_date: target.run_date.clone(),
        rows: files.iter().map(|f| f.rows).sum(),
        files,
        schema,
        writer: format!("segflow {}", env!("CARGO_PKG_VERSION")),
    };
    let manifest_path = staging_dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| SinkError::Parquet { table: target.table.clone(), message: e.to_string() })?;
    write_synced(&manifest_path, text.as_bytes()).map_err(target.io("write", &manifest_path))?;
    let success = staging_dir.join("_SUCCESS");
    write_synced(&success, b"").map_err(target.io("write", &success))?;
    sync_dir(&staging_dir).map_err(target.io("sync", &staging_dir))?;
    Ok(StagedTable { target, manifest, staging_dir })
}

/// Steps 2 and 3: makes the staged folder the live one in one step and removes the old files.
pub fn commit(staged: StagedTable) -> Result<Manifest, SinkError> {
    let target = &staged.target;
    let live = target.live_dir();
    let parent = live.parent().map(Path::to_path_buf).unwrap_or_else(|| target.root.clone());
    fs::create_dir_all(&parent).map_err(target.io("create folder", &parent))?;
    match fs::symlink_metadata(&live) {
        Ok(meta) if !meta.is_dir() => return Err(SinkError::NotAFolder { table: target.table.clone(), path: live }),
        Ok(_) => {
            match exchange(&staged.staging_dir, &live) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)) => {
                    // No atomic exchange here: move the old folder aside, then the new one in.
                    let aside = staged.staging_dir.with_extension("old");
                    fs::rename(&live, &aside).map_err(target.io("move aside", &live))?;
                    fs::rename(&staged.staging_dir, &live).map_err(target.io("rename into place", &live))?;
                    fs::rename(&aside, &staged.staging_dir).map_err(target.io("rename", &aside))?;
                }
                Err(e) => return Err(target.io("swap into place", &live)(e)),
            }
            // The staging path now holds the previous version.
            fs::remove_dir_all(&staged.staging_dir).map_err(target.io("remove previous version", &staged.staging_dir))?;
        }
        Err(_) => {
            fs::rename(&staged.staging_dir, &live).map_err(target.io("rename into place", &live))?;
        }
    }
    sync_dir(&parent).map_err(target.io("sync", &parent))?;
    Ok(staged.manifest)
}

/// Atomically exchanges two folders (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let b = CString::new(b.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    io::Write::write_all(&mut file, bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the manifest of a live partition, if it has one.
pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// How every Parquet file segflow writes is encoded: zstd level 3, fixed row groups.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
        .build()
}

/// Writes batches into `part-NNNNN-<run>.parquet` files of exactly [`ROWS_PER_FILE`] rows
/// (the last one fewer). A table with no rows still gets one file, so its schema is readable.
struct PartWriter<'a> {
    target: &'a TableTarget,
    dir: &'a Path,
    schema: SchemaRef,
    current: Option<(String, ArrowWriter<File>, u64)>,
    done: Vec<ManifestFile>,
}

impl<'a> PartWriter<'a> {
    fn new(target: &'a TableTarget, dir: &'a Path, schema: SchemaRef) -> Self {
        PartWriter { target, dir, schema, current: None, done: Vec::new() }
    }

    fn parquet_err(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Parquet { table: self.target.table.clone(), message: e.to_string() }
    }

    fn open(&mut self) -> Result<(), SinkError> {
        let name = format!("part-{:05}-{}.parquet", self.done.len(), file_safe(&self.target.run_id));
        let path = self.dir.join(&name);
        let file = File::create(&path).map_err(self.target.io("create", &path))?;
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(writer_properties())).map_err(|e| self.parquet_err(e))?;
        self.current = Some((name, writer, 0));
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        if let Some((name, writer, rows)) = self.current.take() {
            let file = writer.into_inner().map_err(|e| self.parquet_err(e))?;
            let path = self.dir.join(&name);
            file.sync_all().map_err(self.target.io("sync", &path))?;
            let bytes = file.metadata().map_err(self.target.io("stat", &path))?.len();
            self.done.push(ManifestFile { name, rows, bytes });
        }
        Ok(())
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open()?;
            }
            let Some((_, writer, rows)) = self.current.as_mut() else { unreachable!("a file was just opened") };
            let room = ROWS_PER_FILE - *rows as usize;
            let take = room.min(batch.num_rows() - offset);
            writer.write(&batch.slice(offset, take)).map_err(|e| SinkError::Parquet { table: self.target.table.clone(), message: e.to_string() })?;
            *rows += take as u64;
            offset += take;
            if *rows as usize >= ROWS_PER_FILE {
                self.close()?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<ManifestFile>, SinkError> {
        if self.current.is_none() && self.done.is_empty() {
            self.open()?;
        }
        self.close()?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_is_moved_into_the_folder_and_committed_with_its_size() {
        let root = tempfile::tempdir().unwrap();
        let scratch = root.path().join("scratch");
        fs::create_dir_all(&scratch).unwrap();
        let written = scratch.join("churn_trees.parquet");
        fs::write(&written, b"twelve bytes").unwrap();
        let target = TableTarget {
            root: root.path().to_path_buf(),
            table: "models/churn".into(),
            partition: Some("run_date=2025-01-01".into()),
            run_id: "r1".into(),
            run_date: "2025-01-01".into(),
            schema_version: 1,
        };
        let files = vec![("model.json".to_string(), FileContent::from(b"{}\n".to_vec())), ("trees.parquet".to_string(), FileContent::Written(written.clone()))];
        let manifest = commit(stage_files(target, files).unwrap()).unwrap();

        let live = root.path().join("models/churn/run_date=2025-01-01");
        assert_eq!(fs::read(live.join("trees.parquet")).unwrap(), b"twelve bytes");
        assert_eq!(fs::read(live.join("model.json")).unwrap(), b"{}\n");
        assert!(live.join("_SUCCESS").exists());
        assert!(!written.exists(), "moved, not copied: the scratch file is gone");
        let sizes: Vec<(&str, u64)> = manifest.files.iter().map(|f| (f.name.as_str(), f.bytes)).collect();
        assert_eq!(sizes, vec![("model.json", 3), ("trees.parquet", 12)]);
    }

    #[test]
    fn a_written_file_that_is_missing_fails_staging_and_names_it() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("scratch/gone.parquet");
        let target = TableTarget {
            root: root.path().to_path_buf(),
            table: "models/churn".into(),
            partition: None,
            run_id: "r1".into(),
            run_date: "2025-01-01".into(),
            schema_version: 1,
        };
        let Err(error) = stage_files(target, vec![("trees.parquet".to_string(), FileContent::Written(missing))]) else {
            panic!("staging a missing file succeeded");
        };
        assert!(error.to_string().contains("scratch/gone.parquet"), "{error}");
        assert!(!root.path().join("models/churn/_SUCCESS").exists());
    }
}
