//! Redis result store: `{prefix}:job:{id}` holds the job as JSON with a TTL; a terminal state is
//! announced on `{prefix}:done:{id}`; heartbeats are a sorted set `{prefix}:workers` scored by
//! the time each worker was last heard from, and the same per model in
//! `{prefix}:workers:{model}`.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use scorer_protocol::job::JobRecord;
use uuid::Uuid;

use super::redis_waiters::{DoneWaiters, POLL};
use super::{ResultStore, WorkerRegistry};
use crate::StoreError;

const SERVICE: &str = "redis";

#[derive(Clone)]
pub struct RedisResultStore {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    /// The process's one pub/sub connection for sync waits (started on the first wait).
    waiters: DoneWaiters,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::unavailable(SERVICE, e)
}

impl RedisResultStore {
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        // Bounded timeouts so a dead Redis turns into a quick 503 instead of a hung request;
        // the manager reconnects by itself with backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(3)
            .set_max_delay(2_000);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(RedisResultStore {
            waiters: DoneWaiters::new(client, prefix),
            conn,
            prefix: prefix.to_string(),
            ttl,
        })
    }

    fn job_key(&self, id: Uuid) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    fn done_channel(&self, id: Uuid) -> String {
        format!("{}:done:{id}", self.prefix)
    }

    fn workers_key(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    fn model_workers_key(&self, model: &str) -> String {
        format!("{}:workers:{model}", self.prefix)
    }

    fn decode(raw: Option<String>) -> Result<Option<JobRecord>, StoreError> {
        raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::corrupt("job record", e)))
            .transpose()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[async_trait]
impl ResultStore for RedisResultStore {
    async fn put(&self, record: &JobRecord) -> Result<(), StoreError> {
        let mut stored = record.clone();
        stored.request = None;
        let json =
            serde_json::to_string(&stored).map_err(|e| StoreError::corrupt("job record", e))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set_ex(self.job_key(record.id), json, self.ttl.as_secs().max(1))
            .ignore();
        if record.status.is_terminal() {
            pipe.publish(self.done_channel(record.id), record.status.as_str())
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(self.job_key(id)).await.map_err(unavailable)?;
        Self::decode(raw)
    }

    async fn wait_terminal(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Registered first: any completion from here on bumps `hints`, so reading the record
        // after registering cannot miss one.
        let mut registration = self.waiters.register(id);
        self.waiters.ready(deadline).await;
        loop {
            if let Some(r) = self.get(id).await?.filter(|r| r.status.is_terminal()) {
                return Ok(Some(r));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = (deadline - now).min(POLL);
            // A hint, the poll interval or the deadline: read the record again either way.
            let _ = tokio::time::timeout(nap, registration.hints.changed()).await;
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

#[async_trait]
impl WorkerRegistry for RedisResultStore {
    async fn heartbeat(&self, worker: &str, model: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let now = now_ms();
        let mut pipe = redis::pipe();
        for key in [self.workers_key(), self.model_workers_key(model)] {
            pipe.zadd(&key, worker, now)
                .ignore()
                // Forget workers silent for an hour so the set does not grow forever.
                .zrembyscore(&key, 0, now - 3_600_000)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn live_workers(&self, within: Duration) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let since = now_ms() - within.as_millis() as i64;
        conn.zrangebyscore(self.workers_key(), since, "+inf")
            .await
            .map_err(unavailable)
    }

    async fn live_model_workers(
        &self,
        model: &str,
        within: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let since = now_ms() - within.as_millis() as i64;
        let mut live: Vec<String> = conn
            .zrangebyscore(self.model_workers_key(model), since, "+inf")
            .await
            .map_err(unavailable)?;
        live.sort();
        Ok(live)
    }

    async fn forget_worker(&self, worker: &str, model: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.zrem(self.workers_key(), worker)
            .ignore()
            .zrem(self.model_workers_key(model), worker)
            .ignore();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }
}
