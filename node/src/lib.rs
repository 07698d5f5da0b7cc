//! craftmesh node: every effect (files, sockets, processes, Docker) lives here; the
//! decisions it acts on come from `craftmesh_protocol`.

pub mod api;
pub mod api_claims;
pub mod api_deploy;
pub mod apiauth;
pub mod apiclient;
pub mod claims;
pub mod cli;
pub mod config_files;
pub mod datadir;
pub mod deploy;
pub mod discovery;
pub mod driver;
pub mod host;
pub mod identity;
pub mod invite;
pub mod mesh;
pub mod node;
pub mod share;
pub mod supervise;
pub mod sys;
pub mod tls;
