//! The `scorer` binary's library half: artifact fetching and model resolution, shared by the CLI
//! and the end-to-end tests.

pub mod fetch;
pub mod home;
