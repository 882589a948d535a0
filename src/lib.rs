//! The `scorer` binary's library half: artifact fetching, model resolution and the bulk client,
//! shared by the CLI and the end-to-end tests.

pub mod bulk;
pub mod fetch;
pub mod home;
