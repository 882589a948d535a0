//! Model FLOPs of one request: the work the packing needs, not what the program pads to.
//!
//! Per computed token:  2 · layers · (h·(nh + 2·nkv)·hd  +  nh·hd·h  +  3·h·ffn)
//!   (q/k/v projections, output projection, gate/up/down; biases, norms, rope and residuals are
//!   below 1% and left out; the embedding is a gather, not a matmul).
//! Attention per computed token at position p (0-based), which sees p + 1 keys:
//!   4 · layers · nh · hd · (p + 1)      (scores Q·Kᵀ and the weighted sum of V, causal only).
//! Head per scored position: 2 · h · V with the full-vocabulary logsumexp (apply_softmax=false),
//!   2 · h · L with the label rows only (apply_softmax=true).
//! Shared-prefix packing computes the request's longest common prefix once and each item's
//! remaining tokens once; per-item packing computes every prompt in full. An item token's
//! position continues from the prefix in both cases, so it sees the same number of keys.

use scorer_engine::packing::Packing;
use scorer_engine::weights::ModelConfig;

/// Multiply-adds of the layers per token, times two.
pub fn dense_flops_per_token(c: &ModelConfig) -> f64 {
    let (h, hd, ffn) = (
        c.hidden_size as f64,
        c.head_dim as f64,
        c.intermediate_size as f64,
    );
    let (nh, nkv) = (c.num_heads as f64, c.num_kv_heads as f64);
    2.0 * c.num_layers as f64 * (h * (nh + 2.0 * nkv) * hd + nh * hd * h + 3.0 * h * ffn)
}

pub struct RequestWork {
    /// Tokens the packing computes (each shared token once).
    pub tokens: usize,
    pub flops: f64,
}

pub fn request_work(
    c: &ModelConfig,
    prompts: &[Vec<u32>],
    labels: usize,
    apply_softmax: bool,
    packing: Packing,
) -> RequestWork {
    let prefix = match packing {
        Packing::SharedPrefix if prompts.len() > 1 => common_prefix(prompts),
        _ => 0,
    };
    // Positions computed: the prefix once, then each prompt from the prefix on.
    let mut positions: Vec<usize> = (0..prefix).collect();
    for p in prompts {
        positions.extend(prefix..p.len());
    }
    let attn_per_key = 4.0 * (c.num_layers * c.num_heads * c.head_dim) as f64;
    let head_cols = if apply_softmax {
        labels as f64
    } else {
        c.vocab_size as f64
    };
    let flops = positions.len() as f64 * dense_flops_per_token(c)
        + positions.iter().map(|&p| (p + 1) as f64).sum::<f64>() * attn_per_key
        + prompts.len() as f64 * 2.0 * c.hidden_size as f64 * head_cols;
    RequestWork {
        tokens: positions.len(),
        flops,
    }
}

fn common_prefix(prompts: &[Vec<u32>]) -> usize {
    let Some((first, rest)) = prompts.split_first() else {
        return 0;
    };
    rest.iter().fold(first.len(), |n, p| {
        first[..n].iter().zip(p).take_while(|(a, b)| a == b).count()
    })
}
