//! Running a batch of jobs on the engine thread: jobs grouped by the kind of pass they need,
//! coalesced by shared prefix (the prefix computed once or found in the prefix cache), packed into
//! passes, and each row of results put back at its (job, item). A prompt longer than one pass goes
//! through chunked prefill (`long.rs`).

use scorer_protocol::{ScoreJob, ScoreOutput};

use crate::coalesce::{PrefixGroup, group_by_prefix, shareable_prefix};
use crate::model::{HeadVariant, Model, PrefixKv};
use crate::packing::{Packing, Pass, plan, plan_at};
use crate::prefix_cache::PrefixCache;
use crate::scoring::{RowValues, finish_row};

use super::EngineConfig;
use super::long::{fits_one_pass, run_long_job};

/// What a pass computes: the head variant, and whether the hidden states come back too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PassKind {
    head: HeadVariant,
    pooled: bool,
}

impl PassKind {
    /// Probabilities and token log-probabilities need the full-vocabulary normaliser; a softmax
    /// over the labels alone needs only the label rows of the head. Hidden states leave the
    /// device only for the jobs that asked for them.
    fn of(job: &ScoreJob) -> PassKind {
        let full = !job.apply_softmax || job.outputs.token_logprobs;
        PassKind {
            head: if full {
                HeadVariant::FullLogprobs
            } else {
                HeadVariant::LabelLogits
            },
            pooled: job.outputs.pooled_hidden_states,
        }
    }
}

/// One item's answer.
#[derive(Debug, Clone)]
struct ItemRow {
    scores: Vec<f64>,
    logprobs: Option<Vec<f64>>,
    hidden: Option<Vec<f32>>,
}

/// Per job: its rows as they are scored, or why it failed.
pub(super) struct Outcomes<'a> {
    pub(super) jobs: &'a [ScoreJob],
    rows: Vec<Vec<Option<ItemRow>>>,
    failed: Vec<Option<String>>,
}

impl<'a> Outcomes<'a> {
    fn new(jobs: &'a [ScoreJob]) -> Self {
        Outcomes {
            jobs,
            rows: jobs.iter().map(|j| vec![None; j.prompts.len()]).collect(),
            failed: vec![None; jobs.len()],
        }
    }

    pub(super) fn fail(&mut self, job: usize, err: &anyhow::Error) {
        self.failed[job] = Some(format!("forward pass failed: {err:#}"));
    }

    /// Runs `passes` (whose row targets index `map`, local to global job indices), optionally
    /// continuing a cached prefix of `len` tokens. A failing pass fails only its jobs.
    pub(super) fn run_passes(
        &mut self,
        model: &Model,
        passes: Vec<Pass>,
        map: &[usize],
        kind: PassKind,
        cached: Option<(&PrefixKv, usize)>,
    ) {
        let values = match kind.head {
            HeadVariant::LabelLogits => RowValues::Logits,
            HeadVariant::FullLogprobs => RowValues::Logprobs,
        };
        for pass in passes {
            match model.run_with(&pass.batch, kind.head, kind.pooled, cached) {
                Ok(out) => {
                    for (r, (target, row)) in pass.rows.iter().zip(&out.values).enumerate() {
                        let j = map[target.job];
                        let job = &self.jobs[j];
                        let row = &row[..job.labels[target.item].len().min(row.len())];
                        let logprobs = (job.outputs.token_logprobs
                            && values == RowValues::Logprobs)
                            .then(|| row.iter().map(|&v| f64::from(v)).collect());
                        let hidden = out.hidden.as_ref().and_then(|h| h.get(r)).cloned();
                        self.rows[j][target.item] = Some(ItemRow {
                            scores: finish_row(row, values, job.apply_softmax, job.temperature),
                            logprobs,
                            hidden: hidden.filter(|_| job.outputs.pooled_hidden_states),
                        });
                    }
                }
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "forward pass failed");
                    for target in &pass.rows {
                        self.fail(map[target.job], &err);
                    }
                }
            }
        }
    }

    fn finish(self) -> Vec<Result<ScoreOutput, String>> {
        self.jobs
            .iter()
            .zip(self.rows)
            .zip(self.failed)
            .map(|((job, rows), failed)| match failed {
                Some(err) => Err(err),
                None => {
                    let rows = rows
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| "an item was not scored".to_string())?;
                    output(job, rows)
                }
            })
            .collect()
    }
}

/// A job's output from its items' rows; every output it asked for must be there.
fn output(job: &ScoreJob, rows: Vec<ItemRow>) -> Result<ScoreOutput, String> {
    let mut out = ScoreOutput::empty(job.outputs);
    out.prompt_tokens = job.prompt_tokens();
    for row in rows {
        out.scores.push(row.scores);
        if let Some(all) = &mut out.token_logprobs {
            all.push(
                row.logprobs
                    .ok_or("token log-probabilities were not computed")?,
            );
        }
        if let Some(all) = &mut out.pooled_hidden_states {
            all.push(row.hidden.ok_or("hidden states were not computed")?);
        }
    }
    Ok(out)
}

/// Scores jobs with as few forward passes as the batch limit allows. Jobs sharing a long enough
/// prefix are coalesced: the prefix's keys/values come from the prefix cache (or are computed
/// once and cached), and the jobs' remaining tokens run as passes that attend them.
pub(super) fn run_jobs(
    model: &Model,
    cfg: &EngineConfig,
    cache: &mut PrefixCache,
    jobs: &[ScoreJob],
) -> Vec<Result<ScoreOutput, String>> {
    let mut out = Outcomes::new(jobs);
    // One group of passes per kind of pass the jobs need, in the order of first appearance.
    let mut groups: Vec<(PassKind, Vec<usize>)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let kind = PassKind::of(job);
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, members)) => members.push(j),
            None => groups.push((kind, vec![j])),
        }
    }
    for (kind, group) in groups {
        let refs: Vec<&ScoreJob> = group.iter().map(|&j| &jobs[j]).collect();
        let coalesce = cfg.packing == Packing::SharedPrefix && cfg.prefix_min_tokens > 0;
        let (prefix_groups, mut plain) = if coalesce {
            group_by_prefix(&refs, cfg.prefix_min_tokens)
        } else {
            (Vec::new(), (0..refs.len()).collect())
        };
        for pg in prefix_groups {
            // Without a cache a lone job gains nothing from a separate prefix pass, unless it
            // needs several passes (its shared prefix would be computed in each) or a chunked
            // prefill.
            let fit = pg.jobs.iter().all(|&j| {
                fits_one_pass(refs[j], cfg.max_batch_tokens)
                    && packed_len(refs[j]) <= cfg.max_batch_tokens
            });
            if cache.capacity() == 0 && pg.jobs.len() < 2 && fit {
                plain.extend(pg.jobs);
                continue;
            }
            let map: Vec<usize> = pg.jobs.iter().map(|&j| group[j]).collect();
            run_prefix_group(model, cfg, cache, &pg, &map, kind, &mut out);
        }
        plain.sort_unstable();
        // Prompts longer than one pass: chunked prefill, one job at a time.
        plain.retain(|&j| {
            let fit = fits_one_pass(refs[j], cfg.max_batch_tokens);
            if !fit {
                run_long_job(model, cfg, group[j], refs[j], None, kind, &mut out);
            }
            fit
        });
        let plain_refs: Vec<&ScoreJob> = plain.iter().map(|&j| refs[j]).collect();
        let map: Vec<usize> = plain.iter().map(|&j| group[j]).collect();
        let passes = plan(&plain_refs, cfg.packing, cfg.max_batch_tokens);
        out.run_passes(model, passes, &map, kind, None);
    }
    out.finish()
}

/// Tokens of one pass holding all of `job` with its shared prefix once.
fn packed_len(job: &ScoreJob) -> usize {
    let shared = shareable_prefix(job).len();
    shared + job.prompts.iter().map(|p| p.len() - shared).sum::<usize>()
}

/// One coalesced group: find or compute the prefix's keys/values, then run every job's tokens
/// after the cached part as passes attending it.
fn run_prefix_group(
    model: &Model,
    cfg: &EngineConfig,
    cache: &mut PrefixCache,
    pg: &PrefixGroup,
    map: &[usize],
    kind: PassKind,
    out: &mut Outcomes<'_>,
) {
    let want = pg.prefix.len();
    let found = cache.lookup(&pg.prefix);
    let (kv, len) = match found {
        Some((shared, kv)) if shared == want => {
            cache.record(want, 0);
            (kv, want)
        }
        // A cached entry covers part of the prefix: use it when recomputing the rest in every
        // job costs less than computing the whole prefix again.
        Some((shared, kv))
            if shared >= cfg.prefix_min_tokens && (want - shared) * pg.jobs.len() <= want =>
        {
            cache.record(shared, want - shared);
            (kv, shared)
        }
        _ => match model.extend_kv(None, &pg.prefix, cfg.prefill_chunk_tokens) {
            Ok(kv) => {
                cache.record(0, want);
                let kv = std::rc::Rc::new(kv);
                cache.insert(&pg.prefix, kv.clone());
                (kv, want)
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "prefix pass failed");
                for &j in map {
                    out.fail(j, &err);
                }
                return;
            }
        },
    };
    let rest: Vec<ScoreJob> = map
        .iter()
        .map(|&j| {
            let job = &out.jobs[j];
            ScoreJob {
                prompts: job.prompts.iter().map(|p| p[len..].to_vec()).collect(),
                labels: job.labels.clone(),
                apply_softmax: job.apply_softmax,
                temperature: job.temperature,
                outputs: job.outputs,
            }
        })
        .collect();
    // A job whose remaining prompts still do not fit one pass continues the prefix chunk by chunk.
    let mut refs: Vec<&ScoreJob> = Vec::new();
    let mut fitting: Vec<usize> = Vec::new();
    for (job, &j) in rest.iter().zip(map) {
        if fits_one_pass(job, cfg.max_batch_tokens) {
            refs.push(job);
            fitting.push(j);
        } else {
            run_long_job(model, cfg, j, job, Some((&kv, len)), kind, out);
        }
    }
    let passes = plan_at(&refs, cfg.packing, cfg.max_batch_tokens, len);
    out.run_passes(model, passes, &fitting, kind, Some((&kv, len)));
}
