//! Deploying shared servers by claim: [`manager`] decides and runs instances, [`holder`]
//! keeps their claims, [`docker`] runs containers through the engine API and [`container`]
//! makes one an instance of the Docker tier.

pub mod chain;
pub mod container;
pub mod docker;
pub mod external;
pub mod holder;
pub mod instance;
pub mod manager;
pub mod place;
pub mod service;
pub mod status;
pub mod tunnel;
pub mod watch;
