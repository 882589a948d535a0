//! Coalescing: grouping the jobs of one batch by the token prefix they share, so each group's
//! prefix is computed (or found in the prefix cache) once and every job's items continue it.
//!
//! Jobs are indexed by their shareable prefix in a [`RadixTree`]; a group is a subtree hanging at
//! the first node at least `min_tokens` deep, so jobs with the same system prompt but different
//! queries share the system prompt, and jobs with the same query share the query as well.

use scorer_protocol::ScoreJob;

use crate::packing::common_prefix_len;
use crate::radix::RadixTree;

/// Jobs (indices into the slice given to [`group_by_prefix`]) whose shareable prefixes all start
/// with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixGroup {
    pub prefix: Vec<u32>,
    pub jobs: Vec<usize>,
}

/// The tokens of a job that items can share: the longest common prefix of its prompts, cut so
/// every prompt keeps at least one token after it (a scored position must be computed in the
/// pass, not read from a cache). For one prompt: all but its last token.
pub fn shareable_prefix(job: &ScoreJob) -> &[u32] {
    let Some(first) = job.prompts.first() else {
        return &[];
    };
    let shortest = job.prompts.iter().map(Vec::len).min().unwrap_or(0);
    let len = common_prefix_len(&job.prompts).min(shortest.saturating_sub(1));
    &first[..len]
}

/// Splits jobs into groups sharing at least `min_tokens` leading tokens, and the rest.
pub fn group_by_prefix(jobs: &[&ScoreJob], min_tokens: usize) -> (Vec<PrefixGroup>, Vec<usize>) {
    let mut tree: RadixTree<Vec<usize>> = RadixTree::new();
    for (j, job) in jobs.iter().enumerate() {
        let key = shareable_prefix(job);
        match tree.get_mut(key) {
            Some(list) => list.push(j),
            None => {
                tree.insert(key, vec![j]);
            }
        }
    }
    let frontier = tree.frontier(min_tokens);
    let groups = frontier
        .groups
        .into_iter()
        .filter_map(|(depth, lists)| {
            let jobs_in: Vec<usize> = lists.into_iter().flatten().copied().collect();
            let first = *jobs_in.first()?;
            Some(PrefixGroup {
                prefix: shareable_prefix(jobs[first])[..depth].to_vec(),
                jobs: jobs_in,
            })
        })
        .collect();
    let rest = frontier.shallow.into_iter().flatten().copied().collect();
    (groups, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(prompts: &[Vec<u32>]) -> ScoreJob {
        ScoreJob {
            prompts: prompts.to_vec(),
            labels: vec![vec![1]; prompts.len()],
            apply_softmax: true,
            temperature: 1.0,
            outputs: Default::default(),
        }
    }

    #[test]
    fn shareable_prefix_leaves_a_token_to_score() {
        let j = job(&[vec![1, 2, 3, 4], vec![1, 2, 3, 5]]);
        assert_eq!(shareable_prefix(&j), &[1, 2, 3]);
        // One prompt is the whole common prefix: it keeps its last token.
        let j = job(&[vec![1, 2, 3], vec![1, 2, 3, 5]]);
        assert_eq!(shareable_prefix(&j), &[1, 2]);
        let j = job(&[vec![1, 2, 3]]);
        assert_eq!(shareable_prefix(&j), &[1, 2]);
    }

    #[test]
    fn jobs_sharing_a_system_prompt_group_together() {
        let sys: Vec<u32> = (100..140).collect();
        let with = |q: &[u32], item: u32| [&sys[..], q, &[item, item + 1]].concat();
        let a = job(&[with(&[1, 2], 7), with(&[1, 2], 9)]);
        let b = job(&[with(&[3], 7)]);
        let c = job(&[(0..50).collect(), (0..49).chain([99]).collect()]);
        let short = job(&[vec![5, 6, 7]]);
        let (groups, rest) = group_by_prefix(&[&a, &b, &c, &short], 32);
        assert_eq!(rest, vec![3]);
        let mut groups = groups;
        groups.sort_by_key(|g| g.jobs.clone());
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].jobs, vec![0, 1]);
        assert_eq!(groups[0].prefix, sys);
        assert_eq!(groups[1].jobs, vec![2]);
        assert_eq!(groups[1].prefix, (0..49).collect::<Vec<u32>>());
    }
}
