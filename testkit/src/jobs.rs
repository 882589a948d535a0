//! Store and queue test support: unique names so tests can share the real services, and job
//! envelope builders.

use scorer_protocol::job::{JobEnvelope, JobPriority};
use uuid::Uuid;

/// A name no other test (or earlier run) uses, so tests can share the services.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// A one-prompt job of `tokens` for `model`, labels Yes/No of the Qwen vocabulary.
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
        outputs: Default::default(),
        served_as: None,
    }
}
