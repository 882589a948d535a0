//! Gathering a batch: the first delivery is awaited without limit, then whatever else arrives
//! within `max_wait` joins until the token or size budget is spent.

use scorer_jobs::{Delivery, JobConsumer, StoreError};

use crate::WorkerConfig;

fn tokens(d: &Delivery) -> usize {
    d.envelope.as_ref().map_or(0, |e| e.prompt_tokens())
}

/// `Ok(None)` when the consumer is closed. `carry` holds a delivery that did not fit the previous
/// batch; it opens the next one.
pub(crate) async fn gather(
    consumer: &mut dyn JobConsumer,
    config: &WorkerConfig,
    carry: &mut Option<Delivery>,
) -> Result<Option<Vec<Delivery>>, StoreError> {
    let first = match carry.take() {
        Some(d) => d,
        None => match consumer.next().await? {
            Some(d) => d,
            None => return Ok(None),
        },
    };
    let mut budget = tokens(&first);
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + config.max_wait;
    while batch.len() < usize::from(config.prefetch.max(1)) && budget < config.max_batch_tokens {
        let Ok(next) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            break;
        };
        let Some(d) = next? else {
            break;
        };
        let t = tokens(&d);
        if budget + t > config.max_batch_tokens {
            *carry = Some(d);
            break;
        }
        budget += t;
        batch.push(d);
    }
    Ok(Some(batch))
}
