//! The service harness and the fault proxy, from `scorer-testkit`.

#![allow(unused_imports)]

pub use scorer_testkit::proxy;
pub use scorer_testkit::*;
