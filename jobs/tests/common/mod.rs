//! Connection settings for the real services the contract tests run against, unique names and
//! envelope builders: all from `scorer-testkit`.

#![allow(unused_imports)]

pub use scorer_testkit::jobs::{envelope, retention, unique};
pub use scorer_testkit::{amqp_url, database_url, redis_url};
