//! craftmesh protocol: every decision as pure code.
//!
//! No tokio, no sockets, no clock, no environment, no files: callers pass text, time and
//! observations in and act on what comes out. This keeps configuration handling,
//! discovery ranking and (later) membership and claims testable without a runtime.
#![forbid(unsafe_code)]

pub mod claims;
pub mod config;
pub mod deploy;
pub mod interfaces;
pub mod joincode;
pub mod lockfile;
pub mod membership;
pub mod mesh;
pub mod report;
pub mod select;
pub mod share;
pub mod sse;
pub mod state;
pub mod supervise;
pub mod wire;
