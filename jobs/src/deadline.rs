//! The one deadline every broker, Redis and Postgres call runs under.
//!
//! A connection that stopped answering (a hung server, a cut that the kernel has not noticed)
//! blocks a call for as long as TCP keeps it open. Each call the API makes while answering a
//! request, and each call the worker makes while settling a message, therefore runs under a
//! limit; past it the call is `Unavailable`, exactly like a service that refused, and a counter
//! says which service it was. Callers choose their counter (`scorer_store_timeouts_total` for the
//! API, `scorer_worker_store_timeouts_total` for the worker), so the two stay apart in a process
//! that runs both.

use std::future::Future;
use std::time::Duration;

use crate::StoreError;

/// A limit and the counter that records calls past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub limit: Duration,
    /// Metric incremented (label `service`) for each call past the limit.
    pub counter: &'static str,
}

/// How long a process may take to stop once told to (SIGTERM; `--shutdown-grace`): the API
/// answers the requests in progress within it (a sync wait is cut short to fit), a worker
/// finishes the pass it is running within it. One value for both, since a deployment sizes its
/// termination grace period (Kubernetes' `terminationGracePeriodSeconds`) on it.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The API's counter of calls past their deadline.
pub const API_TIMEOUTS: &str = "scorer_store_timeouts_total";
/// The worker's counter of calls past their deadline.
pub const WORKER_TIMEOUTS: &str = "scorer_worker_store_timeouts_total";

impl Deadline {
    pub fn new(limit: Duration, counter: &'static str) -> Self {
        Deadline { limit, counter }
    }

    /// Runs `call` (a call to `service`) under the limit.
    pub async fn run<T>(
        &self,
        service: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => {
                metrics::counter!(self.counter, "service" => service).increment(1);
                Err(StoreError::unavailable(
                    service,
                    format!("no answer within {:.1} s", self.limit.as_secs_f64()),
                ))
            }
        }
    }

    /// Like [`Deadline::run`] for calls whose own error type is not a store error (broker
    /// acknowledgements): `Ok(None)` when the limit passed.
    pub async fn settle<T, E>(
        &self,
        service: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, E> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(outcome) => outcome.map(Some),
            Err(_) => {
                metrics::counter!(self.counter, "service" => service).increment(1);
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_past_the_limit_is_unavailable() {
        let d = Deadline::new(Duration::from_millis(20), API_TIMEOUTS);
        let slow = d
            .run("redis", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, StoreError>(())
            })
            .await;
        match slow {
            Err(StoreError::Unavailable { service, message }) => {
                assert_eq!(service, "redis");
                assert!(message.contains("no answer within"), "{message}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        let quick = d.run("redis", async { Ok::<_, StoreError>(7) }).await;
        assert_eq!(quick.ok(), Some(7));
    }
}
