//! Diagnostics that point at a file, a line, a column and a field.
//!
//! Every problem found in configuration becomes a [`Diagnostic`]; nothing in the
//! parsers panics or stops at the first warning, so `craftmesh config check` can
//! show everything wrong with a set of files in one run.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How bad a diagnostic is. Errors stop the configuration from loading; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it (or `<builtin>/...` for embedded defaults, or `env`).
    pub file: String,
    /// 1-based line; 0 when the problem is about the file as a whole.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// Dotted path of the field, e.g. `servers.zen-mcp.resource_requirements.memory_mb`.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(file: &str, line: usize, column: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { severity: Severity::Error, file: file.to_string(), line, column, field: field.into(), message: message.into() }
    }

    pub fn warning(file: &str, line: usize, column: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(file, line, column, field, message) }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A collection of diagnostics with helpers used by the loaders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.0.extend(other);
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
}
