//! Undoing llama.cpp's Q/K row permutation.
//!
//! llama.cpp's converter reorders the rows of llama-architecture Q and K projections so that its
//! rope can rotate adjacent pairs `(2i, 2i+1)` (`w.reshape(n_head, 2, half, cols).swapaxes(1, 2)`).
//! Hugging Face's rope rotates halves `(i, i + half)`, so the rows must be put back; this is the
//! inverse transformers applies in `_reverse_permute_weights`.

use anyhow::{Result, bail};

/// Returns `w` (`[n_head * head_dim, cols]`, row-major) with each head's rows moved from llama.cpp's
/// interleaved order back to Hugging Face's: GGUF row `i * 2 + j` of a head becomes row `j * half + i`.
/// Biases are the `cols == 1` case.
pub fn unpermute_llama_rows(w: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    if n_head == 0 || cols == 0 || !w.len().is_multiple_of(n_head * cols) {
        bail!(
            "cannot unpermute {} values as {n_head} heads x {cols} columns",
            w.len()
        );
    }
    let head_rows = w.len() / cols / n_head;
    if !head_rows.is_multiple_of(2) {
        bail!("head dimension {head_rows} is odd; rows cannot be un-interleaved");
    }
    let half = head_rows / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..n_head {
        let base = h * head_rows;
        for i in 0..half {
            for j in 0..2 {
                let src = (base + i * 2 + j) * cols;
                let dst = (base + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's forward permutation, written from its converter, to check the inverse against.
    fn permute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
        let head_rows = w.len() / cols / n_head;
        let half = head_rows / 2;
        let mut out = vec![0.0; w.len()];
        // reshape(n_head, 2, half, cols).swapaxes(1, 2): out[h, i, j] = in[h, j, i]
        for h in 0..n_head {
            for i in 0..half {
                for j in 0..2 {
                    let dst = (h * head_rows + i * 2 + j) * cols;
                    let src = (h * head_rows + j * half + i) * cols;
                    out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn inverse_of_llama_cpp_permutation() {
        let (n_head, head_dim, cols) = (3, 8, 5);
        let w: Vec<f32> = (0..n_head * head_dim * cols).map(|x| x as f32).collect();
        let permuted = permute(&w, n_head, cols);
        assert_ne!(permuted, w);
        assert_eq!(unpermute_llama_rows(&permuted, n_head, cols).unwrap(), w);
    }

    #[test]
    fn one_head_by_hand() {
        // GGUF rows of a 4-dim head: [r0, r2, r1, r3] (pairs interleaved) -> HF [r0, r1, r2, r3].
        let gguf = [0.0, 2.0, 1.0, 3.0];
        assert_eq!(
            unpermute_llama_rows(&gguf, 1, 1).unwrap(),
            vec![0.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn rejects_odd_heads() {
        assert!(unpermute_llama_rows(&[0.0; 6], 2, 1).is_err());
    }
}
