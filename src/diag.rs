//! Diagnostics: what `validate` (and a failed config load) tells the user.
//!
//! Each one says where (file:line:column), which stage, what is wrong, and how to fix it when
//! a fix can be guessed. They are collected, sorted by position and de-duplicated, so a
//! pipeline with five mistakes prints five lines in the order they appear in the file.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::yaml::Pos;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    pub stage: Option<String>,
    pub message: String,
    pub suggestion: Option<String>,
}

impl Diagnostic {
    pub fn new(file: impl Into<PathBuf>, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Diagnostic { file: file.into(), pos, stage: None, message: message.into(), suggestion: None }
    }

    pub fn in_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    pub fn suggest(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(pos) = self.pos {
            write!(f, ":{pos}")?;
        }
        f.write_str(": ")?;
        if let Some(stage) = &self.stage {
            write!(f, "stage \"{stage}\": ")?;
        }
        f.write_str(&self.message)?;
        if let Some(suggestion) = &self.suggestion {
            write!(f, " ({suggestion})")?;
        }
        Ok(())
    }
}

/// Every problem found in a pipeline, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Sorted by file and position, duplicates removed: the order a reader fixes them in.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.0.sort();
        self.0.dedup();
        self.0
    }

    /// `Ok(value)` when nothing was reported, otherwise every diagnostic.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.is_empty() { Ok(value) } else { Err(self) }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sorted = self.clone().into_sorted();
        for d in &sorted {
            writeln!(f, "{d}")?;
        }
        let n = sorted.len();
        write!(f, "{n} problem{} found", if n == 1 { "" } else { "s" })
    }
}

/// A path shown relative to the working directory when it is under it: shorter messages that
/// still point at the right file.
pub fn display_path(path: &Path) -> PathBuf {
    let path = normalize(path);
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(normalize(&cwd)).ok().map(Path::to_path_buf))
        .unwrap_or(path)
}

/// `a/b/../c` → `a/c`, without touching the filesystem: paths in messages and manifests read
/// the way a person would write them.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let can_pop = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if can_pop {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}
