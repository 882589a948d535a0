//! RoPE frequency scaling, computed as transformers' `modeling_rope_utils.py` (5.24) computes it.
//!
//! Each scheme only changes the inverse frequencies `inv_freq[i]` (i < head_dim / 2) and a factor
//! applied to cos and sin; the program's rotate-half RoPE stays the same. The frequencies are
//! computed here on the host (f64, rounded to f32 as the last step) and baked into the program as a
//! constant, so they are part of its cache key.

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::{Map, Value};

/// A RoPE scaling scheme of HF's `rope_parameters` / legacy `rope_scaling`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `rope_type: "default"`.
    #[default]
    None,
    /// Frequencies divided by `factor`.
    Linear { factor: f64 },
    /// Dynamic NTK. HF recomputes the base only once a sequence is longer than
    /// `max_position_embeddings` (and then keeps it, stateful); up to that length the frequencies
    /// are the default ones. The engine implements that exact range and refuses longer prompts.
    Dynamic {
        factor: f64,
        max_position_embeddings: usize,
    },
    /// Llama 3.1's wavelength-dependent interpolation.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN: ramp between interpolated and extrapolated frequencies, cos/sin scaled by
    /// `attention_factor`.
    Yarn {
        factor: f64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original_max_position_embeddings: usize,
        truncate: bool,
    },
}

fn num(d: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => bail!("rope parameter {key} must be a number, found {v}"),
        },
    }
}

fn need(d: &Map<String, Value>, key: &str, rope_type: &str) -> Result<f64> {
    num(d, key)?.ok_or_else(|| anyhow::anyhow!("rope_type {rope_type:?} needs {key}"))
}

fn positive(key: &str, x: f64) -> Result<f64> {
    if x <= 0.0 {
        bail!("rope parameter {key} must be positive, found {x}");
    }
    Ok(x)
}

impl RopeScaling {
    /// Reads one (flat) RoPE parameter dict. `original_max` is the value HF's
    /// `standardize_rope_params` falls back to for `original_max_position_embeddings` (the config's
    /// own `original_max_position_embeddings` where it has one, else `max_position_embeddings`).
    pub(crate) fn from_dict(
        d: &Map<String, Value>,
        max_position_embeddings: usize,
        original_max: usize,
    ) -> Result<RopeScaling> {
        if let Some(p) = num(d, "partial_rotary_factor")?
            && p != 1.0
        {
            bail!(
                "partial_rotary_factor {p} is not supported (only 1.0: RoPE over all of head_dim)"
            );
        }
        let rope_type = match d.get("rope_type").or_else(|| d.get("type")) {
            None | Some(Value::Null) => "default",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => bail!("rope_type must be a string, found {other}"),
        };
        let orig = || -> Result<usize> {
            match num(d, "original_max_position_embeddings")? {
                Some(x) if x >= 1.0 && x.fract() == 0.0 => Ok(x as usize),
                Some(x) => bail!("original_max_position_embeddings {x} is not a positive integer"),
                None => Ok(original_max),
            }
        };
        Ok(match rope_type {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: positive("factor", need(d, "factor", rope_type)?)?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: positive("factor", need(d, "factor", rope_type)?)?,
                max_position_embeddings,
            },
            "llama3" => {
                let low = positive("low_freq_factor", need(d, "low_freq_factor", rope_type)?)?;
                let high = positive("high_freq_factor", need(d, "high_freq_factor", rope_type)?)?;
                if high <= low {
                    bail!("llama3 rope: high_freq_factor {high} must exceed low_freq_factor {low}");
                }
                RopeScaling::Llama3 {
                    factor: positive("factor", need(d, "factor", rope_type)?)?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: orig()?,
                }
            }
            "yarn" => {
                let original = orig()?;
                let factor = match num(d, "factor")? {
                    Some(f) => positive("factor", f)?,
                    None => max_position_embeddings as f64 / original as f64,
                };
                let mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention_factor = match num(d, "attention_factor")? {
                    Some(a) => a,
                    None => match (num(d, "mscale")?, num(d, "mscale_all_dim")?) {
                        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                            mscale(factor, m) / mscale(factor, a)
                        }
                        _ => mscale(factor, 1.0),
                    },
                };
                // HF: `rope_parameters.get("beta_fast") or 32` (a 0 also falls back).
                let beta = |k: &str, dflt: f64| -> Result<f64> {
                    Ok(num(d, k)?.filter(|x| *x != 0.0).unwrap_or(dflt))
                };
                let truncate = match d.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => bail!("yarn rope: truncate must be a boolean, found {other}"),
                };
                RopeScaling::Yarn {
                    factor,
                    attention_factor,
                    beta_fast: beta("beta_fast", 32.0)?,
                    beta_slow: beta("beta_slow", 1.0)?,
                    original_max_position_embeddings: original,
                    truncate,
                }
            }
            "longrope" => bail!(
                "rope_type \"longrope\" is not supported (Phi-3 long-context scaling: its \
                 frequencies switch with the prompt length); use a checkpoint without it"
            ),
            other => bail!(
                "rope_type {other:?} is not supported (supported: default, linear, dynamic, \
                 llama3, yarn)"
            ),
        })
    }

    /// The longest sequence (max position + 1) the frequencies are exact for, where they depend on
    /// the length.
    pub fn max_exact_positions(&self) -> Option<usize> {
        match self {
            RopeScaling::Dynamic {
                max_position_embeddings,
                ..
            } => Some(*max_position_embeddings),
            _ => None,
        }
    }

    /// `(inv_freq [head_dim / 2], cos/sin factor)` for base `theta`.
    pub fn frequencies(&self, theta: f32, head_dim: usize) -> (Vec<f32>, f32) {
        let dim = head_dim as f64;
        let base = theta as f64;
        let half = head_dim / 2;
        let plain: Vec<f64> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim))
            .collect();
        let round = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        match *self {
            RopeScaling::None | RopeScaling::Dynamic { .. } => (round(plain), 1.0),
            RopeScaling::Linear { factor } => {
                (round(plain.into_iter().map(|f| f / factor).collect()), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let v = plain
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (round(v), 1.0)
            }
            RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast,
                beta_slow,
                original_max_position_embeddings,
                truncate,
            } => {
                let omax = original_max_position_embeddings as f64;
                let corr = |rot: f64| {
                    dim * (omax / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
                };
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                let v = plain
                    .into_iter()
                    .enumerate()
                    .map(|(i, extra)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp; // inv_freq_extrapolation_factor
                        let inter = extra / factor;
                        inter * (1.0 - keep) + extra * keep
                    })
                    .collect();
                (round(v), attention_factor as f32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dict(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn llama3_matches_the_hf_formula_by_hand() {
        let s = RopeScaling::from_dict(
            &dict(
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
            ),
            256,
            256,
        )
        .unwrap();
        let (f, scale) = s.frequencies(500000.0, 16);
        assert_eq!(scale, 1.0);
        // i = 0: wavelength 2π < 16 (high_freq_wavelen): unchanged.
        assert_eq!(f[0], 1.0);
        // i = 7: 1/500000^(14/16), wavelength far above 64: divided by 8.
        let raw = 1.0 / 500000f64.powf(14.0 / 16.0);
        assert!((f[7] as f64 - raw / 8.0).abs() < 1e-12);
    }

    #[test]
    fn dynamic_is_default_within_range() {
        let s = RopeScaling::from_dict(&dict(json!({"type": "dynamic", "factor": 4.0})), 256, 256)
            .unwrap();
        assert_eq!(s.frequencies(1e4, 8), RopeScaling::None.frequencies(1e4, 8));
        assert_eq!(s.max_exact_positions(), Some(256));
    }

    #[test]
    fn refusals_name_the_value() {
        for (d, want) in [
            (json!({"rope_type": "longrope"}), "longrope"),
            (json!({"rope_type": "su"}), "\"su\""),
            (json!({"rope_type": "linear"}), "factor"),
            (
                json!({"partial_rotary_factor": 0.5}),
                "partial_rotary_factor 0.5",
            ),
        ] {
            let e = RopeScaling::from_dict(&dict(d), 10, 10).unwrap_err();
            assert!(format!("{e}").contains(want), "{e}");
        }
    }
}
