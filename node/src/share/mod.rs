//! Shared MCP servers: one instance per LAN, served to every client session on every
//! node. [`child`] runs a stdio server as the node's child; [`link`] connects to an
//! instance and routes what it sends; [`session`] is one client session (rmcp server)
//! that follows the instance across failovers; [`mesh`] carries sessions between nodes;
//! [`http`] serves `/mcp/NAME` on the node's API.

pub mod child;
pub mod http;
pub mod link;
pub mod mesh;
pub mod session;
