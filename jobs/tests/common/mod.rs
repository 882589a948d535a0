//! Connection settings for the real services the contract tests run against.

#![allow(dead_code)]

use scorer_protocol::job::{JobEnvelope, JobPriority};
use uuid::Uuid;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test (or earlier run) uses, so tests can share the services.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

pub fn envelope(model: &str, priority: JobPriority, tokens: Vec<u32>) -> JobEnvelope {
    JobEnvelope {
        job_id: Uuid::new_v4(),
        tenant: "tenant-a".into(),
        priority,
        deadline_ms: None,
        model: model.into(),
        prompts: vec![tokens],
        labels: vec![vec![9454, 2753]],
        apply_softmax: true,
        temperature: 1.0,
        attempt: 1,
        enqueued_at_ms: chrono::Utc::now().timestamp_millis(),
        locality: None,
    }
}
