//! What is wrong with a state: every problem names its entry, its field and the reason.

use std::{fmt, path::PathBuf};

/// One problem in a state file: which entry, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub entry: String,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field `{}`: {}", self.entry, self.field, self.reason)
    }
}

/// Problems collected while validating; validation never stops at the first.
#[derive(Default)]
pub(super) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, entry: impl Into<String>, field: &str, reason: impl Into<String>) {
        self.0.push(Problem { entry: entry.into(), field: field.into(), reason: reason.into() });
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn into_result<T>(self, ok: T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self.0)
        }
    }
}

/// How an entry is named in messages: by its name, or by its position when it has none.
pub(super) fn entry_name(kind: &str, index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{kind}[{index}]")
    } else {
        format!("{kind} \"{name}\"")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {size} bytes is over the {limit}-byte limit of a state file")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), list(.problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// One problem a line, indented: how the CLI and the agent's log show them.
pub fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

impl StateError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            StateError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}
