//! Deploying shared servers by claim: [`manager`] decides and runs instances, [`holder`]
//! keeps their claims.

pub mod holder;
pub mod manager;
