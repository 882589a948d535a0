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

/// Retention tests share the real Postgres with every other test, so they work in a past no
/// other row is in: rows finished at [`retention::old`] are past the cutoff
/// [`retention::cutoff`], rows at [`retention::kept`] are not. Two runs at once delete each
/// other's old rows only, which both expect; neither can delete a row the other keeps.
pub mod retention {
    use chrono::{DateTime, Utc};

    fn day(n: i64) -> DateTime<Utc> {
        // 2000-01-01T00:00:00Z plus n days.
        DateTime::from_timestamp(946_684_800 + n * 86_400, 0).unwrap_or_default()
    }

    /// When the rows that must go finished.
    pub fn old() -> DateTime<Utc> {
        day(0)
    }

    /// The cutoff every retention test prunes at.
    pub fn cutoff() -> DateTime<Utc> {
        day(1)
    }

    /// When the rows that must stay finished (after the cutoff, long before any real row).
    pub fn kept() -> DateTime<Utc> {
        day(2)
    }
}
