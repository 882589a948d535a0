//! The `scorer` binary's library half: artifact fetching, model resolution, the bulk client and
//! API key administration,
//! shared by the CLI and the end-to-end tests.

pub mod bulk;
pub mod fetch;
pub mod home;
pub mod keys;
pub mod plugins;
