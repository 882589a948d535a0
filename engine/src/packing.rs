//! Turning scoring jobs into flattened ragged batches for one forward pass each.
//!
//! A job's prompts usually share a long prefix (the query). With [`Packing::SharedPrefix`] that
//! prefix is one segment computed once, and every item's remaining tokens form a segment that also
//! attends to it, with positions continuing from the prefix — exactly what the per-item prompt
//! would compute, because the prefix is the longest common prefix of the tokenized prompts. With
//! [`Packing::PerItem`] every prompt is its own segment (the reference path the packed one is
//! tested against).

use scorer_protocol::ScoreJob;

use crate::model::PackedBatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packing {
    /// Each job's longest common token prefix is computed once and shared by its items.
    #[default]
    SharedPrefix,
    /// Every prompt is computed in full, as its own segment.
    PerItem,
}

/// Where a scored position's row of results belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowTarget {
    pub job: usize,
    pub item: usize,
}

/// One forward pass: the batch and, per scored position, the (job, item) it answers.
#[derive(Debug, Clone)]
pub struct Pass {
    pub batch: PackedBatch,
    pub rows: Vec<RowTarget>,
}

impl Pass {
    fn new() -> Self {
        Pass {
            batch: PackedBatch {
                tokens: Vec::new(),
                positions: Vec::new(),
                segment: Vec::new(),
                prefix_segment: Vec::new(),
                score_index: Vec::new(),
                label_ids: Vec::new(),
            },
            rows: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.batch.tokens.len()
    }

    fn next_segment(&self) -> i32 {
        self.batch
            .segment
            .iter()
            .copied()
            .max()
            .map_or(0, |s| s + 1)
    }

    /// Appends `tokens` as a new segment starting at `first_position`; returns its id.
    fn push_segment(&mut self, tokens: &[u32], first_position: usize, prefix_segment: i32) -> i32 {
        let seg = self.next_segment();
        for (i, &t) in tokens.iter().enumerate() {
            self.batch.tokens.push(t);
            self.batch.positions.push((first_position + i) as i32);
            self.batch.segment.push(seg);
            self.batch.prefix_segment.push(prefix_segment);
        }
        seg
    }

    fn push_scored(&mut self, index: usize, labels: &[u32], target: RowTarget) {
        self.batch.score_index.push(index as i32);
        self.batch.label_ids.push(labels.to_vec());
        self.rows.push(target);
    }

    /// Pads every label list to the longest one (with id 0; the extra columns are dropped when
    /// results are read back), as the program takes one label count per pass.
    fn finish(mut self) -> Self {
        let width = self.batch.label_ids.iter().map(Vec::len).max().unwrap_or(0);
        for labels in &mut self.batch.label_ids {
            labels.resize(width, 0);
        }
        self
    }
}

/// The longest prefix shared by every prompt.
pub(crate) fn common_prefix_len(prompts: &[Vec<u32>]) -> usize {
    let Some(first) = prompts.first() else {
        return 0;
    };
    prompts[1..].iter().fold(first.len(), |len, p| {
        first[..len]
            .iter()
            .zip(p)
            .take_while(|(a, b)| a == b)
            .count()
    })
}

/// A group of a job's items that go into one pass, under the job's shared prefix.
struct Chunk {
    job: usize,
    prefix: usize,
    items: Vec<usize>,
    tokens: usize,
}

/// Splits jobs into passes of at most `max_tokens` tokens each. Every prompt must fit alone
/// (callers enforce `max_tokens` as the per-prompt limit); a job whose items do not fit together
/// is split into chunks that each repeat the shared prefix.
pub fn plan(jobs: &[&ScoreJob], packing: Packing, max_tokens: usize) -> Vec<Pass> {
    plan_at(jobs, packing, max_tokens, 0)
}

/// [`plan`] for prompts that continue a prefix of `first_position` tokens computed elsewhere (a
/// cached prefix): positions start there.
pub fn plan_at(
    jobs: &[&ScoreJob],
    packing: Packing,
    max_tokens: usize,
    first_position: usize,
) -> Vec<Pass> {
    let mut chunks = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let prefix = match packing {
            Packing::SharedPrefix if job.prompts.len() > 1 => common_prefix_len(&job.prompts),
            _ => 0,
        };
        let mut chunk = Chunk {
            job: j,
            prefix,
            items: Vec::new(),
            tokens: prefix,
        };
        for (i, prompt) in job.prompts.iter().enumerate() {
            let cost = prompt.len() - prefix;
            if !chunk.items.is_empty() && chunk.tokens + cost > max_tokens {
                let next = Chunk {
                    job: j,
                    prefix,
                    items: Vec::new(),
                    tokens: prefix,
                };
                chunks.push(std::mem::replace(&mut chunk, next));
            }
            chunk.items.push(i);
            chunk.tokens += cost;
        }
        if !chunk.items.is_empty() {
            chunks.push(chunk);
        }
    }

    let mut passes = Vec::new();
    let mut pass = Pass::new();
    for chunk in chunks {
        if pass.len() > 0 && pass.len() + chunk.tokens > max_tokens {
            passes.push(std::mem::replace(&mut pass, Pass::new()).finish());
        }
        let job = jobs[chunk.job];
        let prefix_tokens = &job.prompts[chunk.items[0]][..chunk.prefix];
        let (prefix_seg, prefix_end) = if chunk.prefix > 0 {
            let start = pass.len();
            (
                pass.push_segment(prefix_tokens, first_position, -1),
                start + chunk.prefix - 1,
            )
        } else {
            (-1, 0)
        };
        for &i in &chunk.items {
            let suffix = &job.prompts[i][chunk.prefix..];
            let target = RowTarget {
                job: chunk.job,
                item: i,
            };
            if suffix.is_empty() {
                // The whole prompt is the shared prefix: its last token is the scored one.
                pass.push_scored(prefix_end, &job.labels[i], target);
            } else {
                pass.push_segment(suffix, first_position + chunk.prefix, prefix_seg);
                pass.push_scored(pass.len() - 1, &job.labels[i], target);
            }
        }
    }
    if pass.len() > 0 {
        passes.push(pass.finish());
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(prompts: &[&[u32]], labels: &[u32]) -> ScoreJob {
        ScoreJob {
            prompts: prompts.iter().map(|p| p.to_vec()).collect(),
            labels: vec![labels.to_vec(); prompts.len()],
            apply_softmax: true,
            temperature: 1.0,
            outputs: Default::default(),
        }
    }

    #[test]
    fn shared_prefix_is_computed_once() {
        let j = job(&[&[1, 2, 3, 4], &[1, 2, 3, 5, 6], &[1, 2, 3]], &[7, 8]);
        let passes = plan(&[&j], Packing::SharedPrefix, 64);
        assert_eq!(passes.len(), 1);
        let b = &passes[0].batch;
        assert_eq!(b.tokens, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(b.positions, vec![0, 1, 2, 3, 3, 4]);
        assert_eq!(b.segment, vec![0, 0, 0, 1, 2, 2]);
        assert_eq!(b.prefix_segment, vec![-1, -1, -1, 0, 0, 0]);
        // item 0 ends at 3, item 1 at 5, item 2 is the prefix itself (ends at 2)
        assert_eq!(b.score_index, vec![3, 5, 2]);
        let items: Vec<usize> = passes[0].rows.iter().map(|r| r.item).collect();
        assert_eq!(items, vec![0, 1, 2]);
    }

    #[test]
    fn per_item_keeps_prompts_whole() {
        let j = job(&[&[1, 2], &[1, 3]], &[7]);
        let passes = plan(&[&j], Packing::PerItem, 64);
        let b = &passes[0].batch;
        assert_eq!(b.tokens, vec![1, 2, 1, 3]);
        assert_eq!(b.positions, vec![0, 1, 0, 1]);
        assert_eq!(b.segment, vec![0, 0, 1, 1]);
        assert_eq!(b.prefix_segment, vec![-1; 4]);
        assert_eq!(b.score_index, vec![1, 3]);
    }

    #[test]
    fn jobs_split_into_passes_and_labels_are_padded() {
        let a = job(&[&[1, 2, 3, 4], &[1, 2, 3, 5]], &[7]);
        let mut b = job(&[&[9, 9, 9]], &[7, 8, 9]);
        b.apply_softmax = false;
        let passes = plan(&[&a, &b], Packing::SharedPrefix, 6);
        // a packs into 5 tokens; b (3 tokens) does not fit beside it.
        assert_eq!(passes.len(), 2);
        assert_eq!(passes[0].batch.tokens.len(), 5);
        assert_eq!(passes[1].rows, vec![RowTarget { job: 1, item: 0 }]);
        // A job too big for one pass is chunked, each chunk repeating the prefix.
        let big = job(&[&[1, 2, 3, 4], &[1, 2, 3, 5], &[1, 2, 3, 6]], &[7]);
        let passes = plan(&[&big], Packing::SharedPrefix, 5);
        let rows: usize = passes.iter().map(|p| p.rows.len()).sum();
        assert_eq!(rows, 3);
        assert!(passes.iter().all(|p| p.batch.tokens.len() <= 5));
        assert!(passes.iter().all(|p| p.batch.tokens[..3] == [1, 2, 3]));
    }

    #[test]
    fn label_lists_are_padded_to_one_width() {
        let mut j = job(&[&[1, 2], &[1, 3]], &[7]);
        j.labels = vec![vec![7], vec![8, 9, 10]];
        let passes = plan(&[&j], Packing::SharedPrefix, 64);
        assert_eq!(
            passes[0].batch.label_ids,
            vec![vec![7, 0, 0], vec![8, 9, 10]]
        );
    }
}
