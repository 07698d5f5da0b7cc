//! Deploying shared servers by claim: [`manager`] decides and runs instances, [`holder`]
//! keeps their claims, [`docker`] runs containers through the engine API.

pub mod chain;
pub mod docker;
pub mod holder;
pub mod instance;
pub mod manager;
pub mod place;
