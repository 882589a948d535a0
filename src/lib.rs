//! The `scorer` binary's library half: the process roles (`serve`, `api`, `worker`), artifact
//! fetching, model resolution, the bulk client, API key administration and retention (`prune`),
//! shared by the CLI and the end-to-end tests.

pub mod bulk;
pub mod fetch;
pub mod home;
pub mod keys;
pub mod plugins;
pub mod prune;
pub mod roles;
