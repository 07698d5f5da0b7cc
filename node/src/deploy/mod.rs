//! Launchers for the one instance of a shared server that a node runs under its claim.

pub mod docker;
