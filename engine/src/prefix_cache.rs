//! Keys and values of hot token prefixes, kept on the device between batches.
//!
//! Entries are indexed by their tokens in a [`RadixTree`]; a lookup returns the entry sharing the
//! most leading tokens with the asked prefix. Because attention is causal, the first `m` columns
//! of any cached prefix are exactly the keys/values of its first `m` tokens, so an entry serves
//! every prompt that shares `m` leading tokens with it — not only prompts that extend it. The
//! cache is bounded in device bytes and evicts the least recently used entries.

use std::rc::Rc;

use crate::model::PrefixKv;
use crate::radix::RadixTree;

struct Entry {
    key: Vec<u32>,
    kv: Rc<PrefixKv>,
    last_used: u64,
}

/// Counters exported as `prefix_cache_*` metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    pub hit_tokens: u64,
    pub miss_tokens: u64,
    pub bytes: u64,
    pub entries: usize,
    pub evictions: u64,
}

/// An LRU of [`PrefixKv`] bounded in bytes. Lives on the engine thread (device buffers are owned
/// there), hence `Rc`.
pub struct PrefixCache {
    tree: RadixTree<Entry>,
    capacity: u64,
    clock: u64,
    stats: PrefixCacheStats,
}

impl PrefixCache {
    /// A cache holding at most `capacity` bytes (0: nothing is kept).
    pub fn new(capacity: u64) -> Self {
        PrefixCache {
            tree: RadixTree::new(),
            capacity,
            clock: 0,
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// The entry sharing the most leading tokens with `prefix`: `(shared tokens, keys/values)`,
    /// marked as used.
    pub fn lookup(&mut self, prefix: &[u32]) -> Option<(usize, Rc<PrefixKv>)> {
        let (shared, key) = self
            .tree
            .longest_shared(prefix, |e| e.last_used)
            .map(|(shared, e)| (shared, e.key.clone()))?;
        self.clock += 1;
        let entry = self.tree.get_mut(&key)?;
        entry.last_used = self.clock;
        Some((shared.min(entry.kv.tokens()), entry.kv.clone()))
    }

    /// Counts prefix tokens served from the cache and computed.
    pub fn record(&mut self, hit_tokens: usize, miss_tokens: usize) {
        self.stats.hit_tokens += hit_tokens as u64;
        self.stats.miss_tokens += miss_tokens as u64;
        metrics::counter!("prefix_cache_hit_tokens_total").increment(hit_tokens as u64);
        metrics::counter!("prefix_cache_miss_tokens_total").increment(miss_tokens as u64);
    }

    /// Keeps `kv` as the keys/values of `prefix`, evicting least recently used entries to stay
    /// within the byte bound. An entry larger than the whole bound is not kept.
    pub fn insert(&mut self, prefix: &[u32], kv: Rc<PrefixKv>) {
        let bytes = kv.bytes();
        if bytes > self.capacity {
            return;
        }
        if let Some(old) = self.tree.remove(prefix) {
            self.stats.bytes -= old.kv.bytes();
        }
        while self.stats.bytes + bytes > self.capacity {
            let Some(oldest) = self
                .tree
                .values()
                .into_iter()
                .min_by_key(|e| e.last_used)
                .map(|e| e.key.clone())
            else {
                break;
            };
            if let Some(old) = self.tree.remove(&oldest) {
                self.stats.bytes -= old.kv.bytes();
                self.stats.evictions += 1;
            }
        }
        self.clock += 1;
        self.tree.insert(
            prefix,
            Entry {
                key: prefix.to_vec(),
                kv,
                last_used: self.clock,
            },
        );
        self.stats.bytes += bytes;
        self.publish();
    }

    fn publish(&mut self) {
        self.stats.entries = self.tree.len();
        metrics::gauge!("prefix_cache_bytes").set(self.stats.bytes as f64);
        metrics::gauge!("prefix_cache_entries").set(self.stats.entries as f64);
    }
}
