//! Static shape buckets. Every compiled program has fixed shapes, so a batch is
//! padded up to the next bucket; few buckets means few compiles, close buckets
//! means little padded work.

/// The token count a batch of `n` tokens is padded to: powers of two from 32 up
/// to 2048, then multiples of 1024. `None` when `n` exceeds `max`.
pub fn token_bucket(n: usize, max: usize) -> Option<usize> {
    let b = if n <= 32 {
        32
    } else if n <= 2048 {
        n.next_power_of_two()
    } else {
        n.div_ceil(1024) * 1024
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
        assert_eq!(token_bucket(33, 8192), Some(64));
        assert_eq!(token_bucket(1025, 8192), Some(2048));
        assert_eq!(token_bucket(2049, 8192), Some(3072));
        assert_eq!(token_bucket(8192, 8192), Some(8192));
        assert_eq!(token_bucket(8193, 8192), None);
        // A max that is not itself a bucket still admits batches up to it.
        assert_eq!(token_bucket(1500, 1500), Some(1500));
        assert_eq!(token_bucket(1000, 1500), Some(1024));
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
