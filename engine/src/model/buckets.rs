//! Static shape buckets. Every compiled program has fixed shapes, so a batch is
//! padded up to the next bucket; few buckets means few compiles, close buckets
//! means little padded work.
//!
//! Token buckets step by [`FINE_STEP`] up to [`FINE_UNTIL`], where the pass costs grow with
//! the tokens (power-of-two buckets padded a 550-token multi-item pass to 1,024, 128-token
//! steps to 640; 64-token steps pad it to 576), then coarser: above 128 tokens a pass pads
//! fewer than 64 tokens or under a quarter of its bucket, for one more program per bucket
//! (about 0.5 s to compile on the CPU plugin), compiled on first use and kept on disk.

/// Below this many tokens buckets are 32, 48, 64, 96 and 128: a small pass is bound by reading
/// the weights, yet a 34-token prompt took 280 ms in a 64-token bucket and 240 ms at 32.
pub const FINE_FROM: usize = 128;
/// Bucket step between [`FINE_FROM`] and [`FINE_UNTIL`].
pub const FINE_STEP: usize = 64;
pub const FINE_UNTIL: usize = 1024;

/// The token count a batch of `n` tokens is padded to: 32, 48, 64, 96, 128, then multiples of
/// 64 up to 1,024, multiples of 256 up to 2,048, multiples of 512 up to 4,096, then of 1,024. A
/// `max` that is not a bucket still admits batches up to it. `None` when `n` exceeds `max`.
pub fn token_bucket(n: usize, max: usize) -> Option<usize> {
    let step = |n: usize, s: usize| n.div_ceil(s) * s;
    let b = if n <= 32 {
        32
    } else if n <= 64 {
        step(n, 16)
    } else if n <= FINE_FROM {
        step(n, 32)
    } else if n <= FINE_UNTIL {
        step(n, FINE_STEP)
    } else if n <= 2048 {
        step(n, 256)
    } else if n <= 4096 {
        step(n, 512)
    } else {
        step(n, 1024)
    };
    (b <= max.max(32))
        .then_some(b)
        .or_else(|| (n <= max).then_some(max))
}

/// The scored-position count `n` is padded to: powers of two from 1.
pub fn score_bucket(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// The label count `n` is padded to: powers of two from 2.
pub fn label_bucket(n: usize) -> usize {
    n.max(2).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_buckets() {
        assert_eq!(token_bucket(1, 8192), Some(32));
        assert_eq!(token_bucket(32, 8192), Some(32));
        assert_eq!(token_bucket(33, 8192), Some(48));
        assert_eq!(token_bucket(49, 8192), Some(64));
        assert_eq!(token_bucket(65, 8192), Some(96));
        assert_eq!(token_bucket(97, 8192), Some(128));
        assert_eq!(token_bucket(128, 8192), Some(128));
        assert_eq!(token_bucket(129, 8192), Some(192));
        assert_eq!(token_bucket(550, 8192), Some(576));
        assert_eq!(token_bucket(1024, 8192), Some(1024));
        assert_eq!(token_bucket(1025, 8192), Some(1280));
        assert_eq!(token_bucket(2049, 8192), Some(2560));
        assert_eq!(token_bucket(4097, 8192), Some(5120));
        assert_eq!(token_bucket(8192, 8192), Some(8192));
        assert_eq!(token_bucket(8193, 8192), None);
        // A max that is not itself a bucket still admits batches up to it.
        assert_eq!(token_bucket(1500, 1500), Some(1500));
        assert_eq!(token_bucket(1000, 1500), Some(1024));
        assert_eq!(token_bucket(1400, 1500), Some(1500));
    }

    #[test]
    fn token_buckets_are_monotone_and_bound_padding() {
        let mut last = 0;
        for n in 1..=8192 {
            let b = token_bucket(n, 8192).unwrap();
            assert!(b >= n && b >= last, "{n} -> {b}");
            if n > FINE_FROM {
                assert!(b - n < FINE_STEP.max(b / 4), "{n} -> {b} pads too much");
            }
            last = b;
        }
    }

    #[test]
    fn score_and_label_buckets() {
        assert_eq!(score_bucket(0), 1);
        assert_eq!(score_bucket(1), 1);
        assert_eq!(score_bucket(3), 4);
        assert_eq!(label_bucket(1), 2);
        assert_eq!(label_bucket(2), 2);
        assert_eq!(label_bucket(5), 8);
    }
}
