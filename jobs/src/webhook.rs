//! Webhook delivery: POST the final job object to the caller's URL, retrying with exponential
//! backoff on connection errors and non-2xx answers.

use std::time::Duration;

use scorer_protocol::job::JobObject;

#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    attempts: u32,
    initial_backoff: Duration,
}

impl WebhookSender {
    pub fn new(attempts: u32, initial_backoff: Duration, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            // Only a broken TLS backend fails here; a default client still delivers plain HTTP.
            .unwrap_or_default();
        WebhookSender {
            client,
            attempts: attempts.max(1),
            initial_backoff,
        }
    }

    /// Delivers once the receiver answers 2xx; gives up after the configured attempts.
    pub async fn deliver(&self, url: &str, job: &JobObject) -> Result<u32, String> {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match self.client.post(url).json(job).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(attempt),
                Ok(resp) => last = format!("receiver answered {}", resp.status()),
                Err(e) => last = e.to_string(),
            }
            tracing::warn!(job = %job.id, attempt, error = %last, "webhook delivery failed");
            if attempt < self.attempts {
                let factor = 1u32 << (attempt - 1).min(10);
                tokio::time::sleep(self.initial_backoff.saturating_mul(factor)).await;
            }
        }
        Err(last)
    }

    /// Delivers in the background; the outcome is logged.
    pub fn spawn(&self, url: String, job: JobObject) {
        let sender = self.clone();
        tokio::spawn(async move {
            match sender.deliver(&url, &job).await {
                Ok(attempts) => tracing::info!(job = %job.id, attempts, "webhook delivered"),
                Err(e) => tracing::error!(job = %job.id, error = %e, "webhook abandoned"),
            }
        });
    }
}

impl Default for WebhookSender {
    fn default() -> Self {
        WebhookSender::new(5, Duration::from_millis(500), Duration::from_secs(10))
    }
}
