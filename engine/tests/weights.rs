//! Weight loading checked against independent references: the `gguf` Python package's dequantizer
//! (one tensor per GGML type) and transformers' own GGUF loader (state-dict values of both real
//! models, Q/K un-permutation included). Goldens come from `tests/reference/hf_scores.py`.

use std::path::{Path, PathBuf};

use scorer_engine::weights::gguf::GgufFile;
use scorer_engine::weights::{self, Arch, HostTensor, LayerAttention, ModelWeights};
use serde_json::Value;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
const SMOLLM: &str = "smollm2-135m-instruct-q4_1";
const GEMMA: &str = "gemma-3-270m-q4_k_m";

fn goldens_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens")
}

fn model_path(alias: &str) -> PathBuf {
    let home = std::env::var_os("SCORER_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/scorer")
        });
    let p = home.join("models").join(format!("{alias}.gguf"));
    assert!(
        p.is_file(),
        "model {} missing: run `scorer fetch` first",
        p.display()
    );
    p
}

fn golden(name: &str) -> Value {
    let p = goldens_dir().join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(*g);
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Same position-weighted sum as the Python script, so a row permutation changes it.
fn checksum(t: &HostTensor) -> f64 {
    let cols = if t.shape.len() > 1 {
        t.shape[1..].iter().product()
    } else {
        t.numel()
    };
    let mut sum = 0.0f64;
    for (idx, v) in t.data.iter().enumerate() {
        let (r, c) = ((idx / cols) as i64, (idx % cols) as i64);
        sum += f64::from(*v) * ((r * 31 + c * 17) % 97) as f64 / 97.0;
    }
    sum
}

#[test]
fn every_ggml_type_dequantizes_like_gguf_py() {
    let want = golden("quant_types.json");
    let g = GgufFile::open(&goldens_dir().join("quant_types.gguf")).unwrap();
    let mut types = Vec::new();
    for (name, entry) in want.as_object().unwrap() {
        let t = g.tensor_f32(name).unwrap();
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        assert_close(name, &t.data, &floats(&entry["values"]), 1e-6);
        types.push(format!("{:?}", g.tensor_type(name).unwrap()));
    }
    types.sort();
    let mut expected = vec![
        "BF16", "F16", "F32", "Q4K", "Q4_0", "Q4_1", "Q5_0", "Q6K", "Q8_0",
    ];
    expected.sort();
    assert_eq!(types, expected);
}

fn hf_tensor<'a>(w: &'a ModelWeights, hf_name: &str) -> &'a HostTensor {
    let parts: Vec<&str> = hf_name.split('.').collect();
    match parts.as_slice() {
        ["model", "embed_tokens", "weight"] => &w.embed_tokens,
        ["model", "norm", "weight"] => &w.final_norm,
        ["lm_head", "weight"] => w.lm_head.as_ref().expect("untied lm_head"),
        ["model", "layers", i, rest @ ..] => {
            let l = &w.layers[i.parse::<usize>().unwrap()];
            let gemma = w.config.arch == Arch::Gemma3;
            match rest.join(".").as_str() {
                "input_layernorm.weight" => &l.attn_norm,
                // Gemma's post_attention_layernorm normalises the attention output; Llama's is
                // the norm before the MLP.
                "post_attention_layernorm.weight" if gemma => {
                    l.post_attn_norm.as_ref().expect("post_attention_layernorm")
                }
                "post_attention_layernorm.weight" => &l.ffn_norm,
                "pre_feedforward_layernorm.weight" => &l.ffn_norm,
                "post_feedforward_layernorm.weight" => l
                    .post_ffn_norm
                    .as_ref()
                    .expect("post_feedforward_layernorm"),
                "self_attn.q_norm.weight" => l.q_norm.as_ref().expect("q_norm"),
                "self_attn.k_norm.weight" => l.k_norm.as_ref().expect("k_norm"),
                "self_attn.q_proj.weight" => &l.q_proj,
                "self_attn.q_proj.bias" => l.q_bias.as_ref().unwrap(),
                "self_attn.k_proj.weight" => &l.k_proj,
                "self_attn.k_proj.bias" => l.k_bias.as_ref().unwrap(),
                "self_attn.v_proj.weight" => &l.v_proj,
                "self_attn.v_proj.bias" => l.v_bias.as_ref().unwrap(),
                "self_attn.o_proj.weight" => &l.o_proj,
                "mlp.gate_proj.weight" => &l.gate_proj,
                "mlp.up_proj.weight" => &l.up_proj,
                "mlp.down_proj.weight" => &l.down_proj,
                other => panic!("unknown layer tensor {other}"),
            }
        }
        _ => panic!("unknown tensor {hf_name}"),
    }
}

fn check_against_transformers(alias: &str) -> ModelWeights {
    let gold = golden(&format!("{alias}.json"));
    let w = weights::load(&model_path(alias)).unwrap();
    assert_eq!(
        w.config.vocab_size as u64,
        gold["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(
        w.config.tie_word_embeddings,
        gold["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(w.lm_head.is_none(), w.config.tie_word_embeddings);
    let entries = gold["weights"].as_array().unwrap();
    assert!(entries.len() >= 8, "too few weight goldens");
    for e in entries {
        let name = e["hf_name"].as_str().unwrap();
        let t = hf_tensor(&w, name);
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name} shape");
        if let Some(rows) = e.get("first_rows") {
            for (r, row) in rows.as_array().unwrap().iter().enumerate() {
                let want = floats(row);
                assert_close(
                    &format!("{name} row {r}"),
                    &t.row(r)[..want.len()],
                    &want,
                    1e-6,
                );
            }
            let tail = floats(&e["last_row_tail"]);
            let last = t.row(t.shape[0] - 1);
            assert_close(
                &format!("{name} last row"),
                &last[last.len() - tail.len()..],
                &tail,
                1e-6,
            );
        } else {
            let head = floats(&e["head"]);
            assert_close(name, &t.data[..head.len()], &head, 1e-6);
        }
        let (got, want) = (checksum(t), e["checksum"].as_f64().unwrap());
        assert!(
            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "{name} checksum: got {got}, want {want}"
        );
    }
    w
}

#[test]
fn qwen2_gguf_matches_transformers() {
    let w = check_against_transformers(QWEN);
    let c = &w.config;
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size
        ),
        (24, 896, 14, 2, 64, 4864)
    );
    assert_eq!(c.rope_theta, 1e6);
    assert!((c.rms_norm_eps - 1e-6).abs() < 1e-12);
    assert!(c.attention_bias);
    assert_eq!(
        (c.bos_token_id, c.eos_token_id),
        (Some(151643), Some(151645))
    );
    // This GGUF stores a separate Q8_0 `output.weight`, so transformers does not tie the head.
    assert!(!c.tie_word_embeddings && w.lm_head.is_some());
}

#[test]
fn llama_gguf_matches_transformers_after_unpermuting_qk() {
    let w = check_against_transformers(SMOLLM);
    let c = &w.config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size
        ),
        (30, 576, 9, 3, 64, 1536)
    );
    assert_eq!(c.rope_theta, 1e5);
    assert!(!c.attention_bias && w.layers[0].q_bias.is_none());
    assert!(c.tie_word_embeddings && w.lm_head.is_none());
    assert_eq!(w.num_params(), 134_515_008);

    // The raw GGUF rows are llama.cpp's interleaved order; the loader must have changed them.
    let g = GgufFile::open(&model_path(SMOLLM)).unwrap();
    let raw = g.tensor_f32("blk.0.attn_q.weight").unwrap();
    assert_ne!(raw.data, w.layers[0].q_proj.data);
    assert_eq!(
        raw.row(1),
        w.layers[0].q_proj.row(32),
        "GGUF row 1 is HF row head_dim/2"
    );
}

/// Gemma 3 from GGUF: norms come back as transformers has them (llama.cpp's stored `1 + w` minus
/// one), Q/K rows are not permuted (transformers permutes only architecture "llama"), and the
/// descriptor is what transformers' GGUF loader configures.
#[test]
fn gemma3_gguf_matches_transformers() {
    let w = check_against_transformers(GEMMA);
    let c = &w.config;
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size
        ),
        (18, 640, 4, 1, 256, 2048)
    );
    assert_eq!(c.rope_theta, 1e6);
    let f = &c.features;
    assert_eq!(f.local_rope_theta, Some(1e4));
    assert_eq!(f.sliding_window, Some(512));
    let gold = golden(&format!("{GEMMA}.json"));
    let want_types: Vec<LayerAttention> = gold["layer_types"]
        .as_array()
        .expect("layer_types")
        .iter()
        .map(|t| match t.as_str() {
            Some("sliding_attention") => LayerAttention::Sliding,
            Some("full_attention") => LayerAttention::Full,
            other => panic!("layer type {other:?}"),
        })
        .collect();
    assert_eq!(f.layer_attention, want_types);
    assert_eq!(f.embed_scale, Some(640f32.sqrt()));
    assert_eq!(f.attn_scale, Some(1.0 / 16.0));
    assert!(f.qk_norm && f.sandwich_norms && f.final_softcap.is_none());
    assert!(c.tie_word_embeddings && w.lm_head.is_none());
    let g = GgufFile::open(&model_path(GEMMA)).unwrap();
    let raw = g.tensor_f32("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        raw.data, w.layers[0].q_proj.data,
        "gemma3 Q rows are stored unpermuted"
    );
    let raw_norm = g.tensor_f32("blk.0.attn_norm.weight").unwrap();
    assert_eq!(raw_norm.data[0] - 1.0, w.layers[0].attn_norm.data[0]);
}

#[test]
fn content_hash_is_stable_and_distinguishes_models() {
    let a = weights::content_hash(&model_path(SMOLLM)).unwrap();
    assert_eq!(a, weights::content_hash(&model_path(SMOLLM)).unwrap());
    assert_eq!(a.len(), 64);
    assert_ne!(a, weights::content_hash(&model_path(QWEN)).unwrap());
}

/// Tiny checkpoints saved by transformers itself (F32, F16, BF16; sharded and single-file; tied and
/// untied heads): every tensor must equal what transformers loads from the same directory.
#[test]
fn hf_directories_match_transformers() {
    let gold = golden("tiny_hf_models.json");
    for (name, entry) in gold.as_object().unwrap() {
        let dir = goldens_dir().join(name);
        let w = weights::load(&dir).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let c = &w.config;
        let tied = entry["tie_word_embeddings"].as_bool().unwrap();
        assert_eq!(c.tie_word_embeddings, tied, "{name}");
        assert_eq!(w.lm_head.is_none(), tied, "{name}");
        assert_eq!(
            (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (320, 32, 64, 2, 4, 2, 8),
            "{name}"
        );
        assert_eq!(c.rope_theta, 5000.0, "{name}");
        assert!((c.rms_norm_eps - 1e-5).abs() < 1e-12, "{name}");
        assert_eq!(
            c.arch,
            if name.contains("llama") {
                Arch::Llama
            } else {
                Arch::Qwen2
            }
        );
        assert_eq!(c.attention_bias, c.arch == Arch::Qwen2, "{name}");
        let tensors = entry["tensors"].as_object().unwrap();
        assert_eq!(
            tensors.len(),
            3 + 9 * c.num_layers + usize::from(c.attention_bias) * 3 * c.num_layers
        );
        for (tname, t) in tensors {
            let ours = if tname == "lm_head.weight" {
                w.lm_head_or_embed()
            } else {
                hf_tensor(&w, tname)
            };
            let shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(ours.shape, shape, "{name} {tname}");
            assert_close(
                &format!("{name} {tname}"),
                &ours.data[..8],
                &floats(&t["head"]),
                1e-7,
            );
            let (got, want) = (checksum(ours), t["checksum"].as_f64().unwrap());
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{name} {tname}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn hf_directory_identity_covers_every_shard() {
    let dir = goldens_dir().join("tiny-llama-bf16-sharded");
    let tmp = std::env::temp_dir().join(format!("scorer-weights-hash-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.join(e.file_name())).unwrap();
    }
    let original = weights::content_hash(&dir).unwrap();
    assert_eq!(
        weights::content_hash(&tmp).unwrap(),
        original,
        "a copy keeps its identity"
    );
    let shard = tmp.join("model-00002-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    assert_ne!(
        weights::content_hash(&tmp).unwrap(),
        original,
        "a changed shard changes it"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
