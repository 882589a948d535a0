//! The head side of a pass as the host sees it: label values and, in the pooled variant, the
//! final-norm hidden states (SGLang's `return_pooled_hidden_states`). Kept apart from the layer
//! program so the output side can change without touching the block.

use anyhow::{Context, Result, ensure};

use crate::pjrt::Buffer;

/// What one forward pass answers per scored position.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadRows {
    /// One value per label (see [`super::Model::run`]).
    pub values: Vec<Vec<f32>>,
    /// The final-norm hidden state (`hidden_size` floats), when asked for.
    pub hidden: Option<Vec<Vec<f32>>>,
}

/// The first `s` rows of the pooled program's second result, `f32[sb, H]`.
pub(super) fn pooled_rows(out: Option<&Buffer>, s: usize, sb: usize) -> Result<Vec<Vec<f32>>> {
    let out = out.context("the pooled program returned no hidden states")?;
    let flat = out.to_host::<f32>().context("reading the hidden states")?;
    ensure!(
        sb > 0 && !flat.is_empty() && flat.len() % sb == 0,
        "hidden states of {} floats for {sb} scored positions",
        flat.len()
    );
    let h = flat.len() / sb;
    Ok(flat.chunks(h).take(s).map(<[f32]>::to_vec).collect())
}
