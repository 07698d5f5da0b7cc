//! Claims on openraft: the Raft type configuration, storage, the mesh transport of its
//! RPCs, and the service that answers the API (see `craftmesh_protocol::claims` for the
//! state machine itself).

pub mod clock;
pub mod sm;
pub mod store;
pub mod types;
