//! Prompts longer than one pass: chunked prefill.
//!
//! A pass holds at most `max_batch_tokens` tokens, and its attention is `[heads, T, columns]`, so
//! a long prompt cannot be one pass without memory growing with its square. Instead the part of
//! the prompt before its scored position is turned into keys/values chunk by chunk
//! ([`Model::extend_kv`]: each chunk of `prefill_chunk_tokens` attends to the keys/values of
//! everything before it), and the scored tokens then run as an ordinary pass over that cache. A
//! job's shared prefix (the query) is computed once for all its items; an item whose own tokens
//! still do not fit one pass continues the query's cache the same way, and only its last token
//! is scored in the final pass. Scores equal those of one unchunked pass (causal attention:
//! every position sees exactly the positions before it, whichever pass computed them).

use scorer_protocol::ScoreJob;

use crate::coalesce::shareable_prefix;
use crate::model::{Model, PrefixKv};
use crate::packing::{Pass, plan_at};

use super::EngineConfig;
use super::passes::{Outcomes, PassKind};

/// Whether every prompt of `job` fits one pass of `max_tokens` (its items then pack as usual).
pub(super) fn fits_one_pass(job: &ScoreJob, max_tokens: usize) -> bool {
    job.prompts.iter().all(|p| p.len() <= max_tokens)
}

/// Scores job `j` (global index into `out`), whose `job.prompts` continue the first `len`
/// positions of `base` (none: they start at position 0), when some prompt is longer than a pass.
pub(super) fn run_long_job(
    model: &Model,
    cfg: &EngineConfig,
    j: usize,
    job: &ScoreJob,
    base: Option<(&PrefixKv, usize)>,
    kind: PassKind,
    out: &mut Outcomes<'_>,
) {
    let mut run = || -> anyhow::Result<()> {
        let chunk = cfg.prefill_chunk_tokens;
        let start = base.map_or(0, |(_, len)| len);
        // The job's shared tokens (all but the last token of a lone prompt) once, chunk by chunk.
        let shared = shareable_prefix(job).len();
        let own;
        let (query, qlen) = if shared > 0 {
            let first = job.prompts.first().map_or(&[][..], |p| &p[..shared]);
            own = model.extend_kv(base, first, chunk)?;
            (Some(&own), start + shared)
        } else {
            (base.map(|(kv, _)| kv), start)
        };

        // Items whose tokens after the query fit one pass are packed together as usual.
        let (short, long): (Vec<usize>, Vec<usize>) = (0..job.prompts.len())
            .partition(|&i| job.prompts[i].len() - shared <= cfg.max_batch_tokens);
        let sub = |items: &[usize], from: &dyn Fn(&[u32]) -> Vec<u32>| ScoreJob {
            prompts: items.iter().map(|&i| from(&job.prompts[i])).collect(),
            labels: items.iter().map(|&i| job.labels[i].clone()).collect(),
            apply_softmax: job.apply_softmax,
            temperature: job.temperature,
            outputs: job.outputs,
        };
        if !short.is_empty() {
            let rest = sub(&short, &|p: &[u32]| p[shared..].to_vec());
            let passes = plan_at(&[&rest], cfg.packing, cfg.max_batch_tokens, qlen);
            let cached = query.map(|kv| (kv, qlen));
            out.run_passes(model, with_items(passes, &short), &[j], kind, cached);
        }
        // Each long item continues the query's cache up to its last token, which is then scored.
        for i in long {
            let p = &job.prompts[i];
            let body = &p[shared..p.len() - 1];
            let kv = model.extend_kv(query.map(|kv| (kv, qlen)), body, chunk)?;
            let last = sub(&[i], &|p: &[u32]| p[p.len() - 1..].to_vec());
            let at = qlen + body.len();
            let passes = plan_at(&[&last], cfg.packing, cfg.max_batch_tokens, at);
            out.run_passes(model, with_items(passes, &[i]), &[j], kind, Some((&kv, at)));
        }
        Ok(())
    };
    if let Err(err) = run() {
        tracing::error!(error = %format!("{err:#}"), "chunked prefill failed");
        out.fail(j, &err);
    }
}

/// Passes planned over a job holding only `items` of the real job answer those items.
fn with_items(mut passes: Vec<Pass>, items: &[usize]) -> Vec<Pass> {
    for pass in &mut passes {
        for row in &mut pass.rows {
            row.item = items[row.item];
        }
    }
    passes
}
