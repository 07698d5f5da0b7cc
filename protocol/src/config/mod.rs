//! Configuration: the PromptCraft files' types, located parsing, layering and validation.

pub mod agents;
pub mod catalog;
pub mod diag;
pub mod mcp;
pub mod size;
pub mod source;

pub use catalog::{Config, LayerFiles, LayerKind, Profile, ServerSpec, Settings, TextFile, load};
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use size::ByteSize;
