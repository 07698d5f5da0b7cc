//! Claims on openraft: the Raft type configuration, storage, the mesh transport of its
//! RPCs, and the service that answers the API (see `craftmesh_protocol::claims` for the
//! state machine itself).

pub mod actor;
pub mod clock;
pub mod failover;
pub mod inbound;
pub mod instance;
pub mod leader;
pub mod mesh_transport;
pub mod network;
pub mod run;
pub mod service;
pub mod sm;
pub mod store;
pub mod types;
pub mod wire;

pub use actor::{ClaimsEvent, EventSink, Liveness, Members};
pub use run::{StartError, Wiring, start};
pub use service::{ClaimsHandle, ClaimsOptions, ClusterView};
