//! Refuse, never guess: every config feature or checkpoint content the program does not
//! implement fails at load with an error naming the field (or tensor) and its value. One test per
//! refusal, each next to a control that the unmodified config loads, so a refusal cannot pass by
//! the base config being broken.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::gguf_file::Value as GgufValue;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use scorer_engine::weights::{self, Arch, parse_hf_config};
use serde_json::{Value, json};

fn goldens_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens")
}

/// A minimal valid config.json of each family, as transformers would write it.
fn base(model_type: &str) -> Value {
    let mut c = json!({
        "model_type": model_type,
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "rms_norm_eps": 1e-6, "max_position_embeddings": 128,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    });
    if model_type == "gemma3_text" {
        c["rope_parameters"] = json!({
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        });
        c["sliding_window"] = json!(8);
        c["layer_types"] = json!(["sliding_attention", "full_attention"]);
    }
    c
}

/// `base(model_type)` with `patch`'s keys set (a `null` removes a key).
fn with(model_type: &str, patch: Value) -> Value {
    let mut c = base(model_type);
    for (k, v) in patch.as_object().expect("patch object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k.as_str()] = v.clone();
        }
    }
    c
}

fn refused(config: Value, needle: &str) {
    let model_type = config["model_type"].as_str().unwrap_or("").to_string();
    // The control: the family's base config loads.
    if Arch::parse(&model_type).is_ok() && model_type != "gemma3" {
        parse_hf_config(&base(&model_type), "control".into())
            .unwrap_or_else(|e| panic!("base {model_type} config must load: {e:#}"));
    }
    match parse_hf_config(&config, "t".into()) {
        Ok(c) => panic!("loaded instead of refusing ({needle}): {c:?}"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains(needle), "error {msg:?} should name {needle:?}");
        }
    }
}

macro_rules! refusal {
    ($name:ident, $config:expr, $needle:expr) => {
        #[test]
        fn $name() {
            refused($config, $needle);
        }
    };
}

refusal!(
    unknown_model_type,
    with("llama", json!({"model_type": "gpt_neox"})),
    "\"gpt_neox\""
);
refusal!(
    mixtral_is_not_llama,
    with("llama", json!({"model_type": "mixtral"})),
    "\"mixtral\""
);
refusal!(
    multimodal_gemma3,
    with("llama", json!({"model_type": "gemma3"})),
    "gemma3_text"
);
refusal!(
    moe_num_experts,
    with("qwen3", json!({"num_experts": 8})),
    "num_experts = 8"
);
refusal!(
    moe_num_local_experts,
    with("mistral", json!({"num_local_experts": 8})),
    "num_local_experts = 8"
);
refusal!(
    unknown_rope_type,
    with(
        "llama",
        json!({"rope_parameters": {"rope_type": "fancy", "rope_theta": 1e4}})
    ),
    "\"fancy\""
);
refusal!(
    longrope,
    with(
        "phi3",
        json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}})
    ),
    "longrope"
);
refusal!(
    phi3_legacy_su_scaling,
    with("phi3", json!({"rope_scaling": {"type": "su"}})),
    "\"su\""
);
refusal!(
    phi3_linear_scaling,
    with(
        "phi3",
        json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    ),
    "phi3"
);
refusal!(
    partial_rotary_factor,
    with("phi3", json!({"partial_rotary_factor": 0.75})),
    "partial_rotary_factor = 0.75"
);
refusal!(
    partial_rotary_in_rope_parameters,
    with(
        "llama",
        json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}})
    ),
    "partial_rotary_factor 0.5"
);
refusal!(
    sliding_window_on_llama,
    with("llama", json!({"sliding_window": 4096})),
    "sliding_window = 4096"
);
refusal!(
    qwen_use_sliding_window,
    with(
        "qwen2",
        json!({"use_sliding_window": true, "sliding_window": 4096})
    ),
    "use_sliding_window"
);
refusal!(
    qwen3_sliding_layer_types,
    with(
        "qwen3",
        json!({"layer_types": ["full_attention", "sliding_attention"]})
    ),
    "sliding_attention"
);
refusal!(
    mistral_layer_types,
    with(
        "mistral",
        json!({"layer_types": ["full_attention", "full_attention"]})
    ),
    "layer_types"
);
refusal!(
    unknown_attention_type,
    with(
        "gemma3_text",
        json!({"layer_types": ["chunked_attention", "full_attention"]})
    ),
    "chunked_attention"
);
refusal!(
    softcapping_on_llama,
    with("llama", json!({"final_logit_softcapping": 30.0})),
    "final_logit_softcapping = 30"
);
refusal!(
    attn_softcapping_on_qwen3,
    with("qwen3", json!({"attn_logit_softcapping": 50.0})),
    "attn_logit_softcapping = 50"
);
refusal!(
    attn_softcapping_on_gemma3,
    with("gemma3_text", json!({"attn_logit_softcapping": 50.0})),
    "attn_logit_softcapping = 50"
);
refusal!(
    attention_bias_on_llama,
    with("llama", json!({"attention_bias": true})),
    "attention_bias = true"
);
refusal!(
    mlp_bias,
    with("mistral", json!({"mlp_bias": true})),
    "mlp_bias = true"
);
refusal!(
    bidirectional_gemma,
    with("gemma3_text", json!({"use_bidirectional_attention": true})),
    "use_bidirectional_attention"
);
refusal!(
    wrong_activation,
    with("llama", json!({"hidden_act": "gelu"})),
    "hidden_act = \"gelu\""
);
refusal!(
    gemma_with_silu,
    with("gemma3_text", json!({"hidden_activation": "silu"})),
    "hidden_activation = \"silu\""
);
refusal!(
    scaled_sliding_rope,
    with(
        "gemma3_text",
        json!({"rope_parameters": {
    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}})
    ),
    "sliding_attention"
);
refusal!(
    quantized_checkpoint,
    with(
        "qwen2",
        json!({"quantization_config": {"quant_method": "awq"}})
    ),
    "awq"
);
refusal!(
    layer_types_length,
    with("gemma3_text", json!({"layer_types": ["full_attention"]})),
    "layer_types lists 1"
);
refusal!(
    llama3_missing_factor,
    with(
        "llama",
        json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}})
    ),
    "low_freq_factor"
);

/// MistralConfig's defaults: an absent sliding_window is 4096, an explicit null is none.
#[test]
fn mistral_sliding_window_defaults() {
    let absent = parse_hf_config(&base("mistral"), "a".into()).expect("absent");
    assert_eq!(absent.features.sliding_window, Some(4096));
    // (`with` would remove a null key, so it is set by hand.)
    let mut c = base("mistral");
    c["sliding_window"] = Value::Null;
    let none = parse_hf_config(&c, "n".into()).expect("null");
    assert_eq!(none.features.sliding_window, None);
    assert!(none.features.layer_attention.is_empty());
}

#[test]
fn both_rope_spellings_resolve_alike() {
    let legacy = with(
        "llama",
        json!({"rope_parameters": null, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    );
    let v5 = with(
        "llama",
        json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    );
    let a = parse_hf_config(&legacy, "a".into()).expect("legacy keys");
    let b = parse_hf_config(&v5, "b".into()).expect("rope_parameters");
    assert_eq!(a.rope_theta, 500000.0);
    assert_eq!((a.rope_theta, &a.features), (b.rope_theta, &b.features));
    assert!(matches!(
        a.features.rope_scaling,
        weights::RopeScaling::Llama3 { .. }
    ));
    // Gemma 3's legacy spelling: rope_theta for global layers, rope_local_base_freq for local.
    let g = with(
        "gemma3_text",
        json!({"rope_parameters": null, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "layer_types": null, "sliding_window_pattern": 2}),
    );
    let g = parse_hf_config(&g, "g".into()).expect("legacy gemma");
    assert_eq!(g.rope_theta, 1e6);
    assert_eq!(g.features.local_rope_theta, Some(1e4));
    assert_eq!(
        g.features.layer_attention,
        vec![
            weights::LayerAttention::Sliding,
            weights::LayerAttention::Full
        ]
    );
}

// ---- checkpoint contents -------------------------------------------------------------

/// A path under the temp dir, removed (file or directory) when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Scratch(
            std::env::temp_dir().join(format!("scorer-refusal-{}-{n}-{tag}", std::process::id())),
        )
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A temp dir holding `src`'s safetensors with `config` as its config.json.
fn hf_dir(src: &str, config: &Value, tag: &str) -> Scratch {
    let dir = Scratch::new(tag);
    std::fs::create_dir_all(dir.path()).expect("temp dir");
    std::fs::copy(
        goldens_dir().join(src).join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .expect("copy weights");
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    dir
}

fn config_of(src: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(goldens_dir().join(src).join("config.json")).expect("config"),
    )
    .expect("json")
}

/// Qwen3 weights under a Llama config: the q_norm / k_norm tensors would be dropped.
#[test]
fn unused_checkpoint_tensor() {
    let mut c = config_of("tiny-qwen3");
    weights::load(hf_dir("tiny-qwen3", &c, "control").path()).expect("control loads");
    c["model_type"] = json!("llama");
    for k in ["sliding_window", "use_sliding_window", "max_window_layers"] {
        c.as_object_mut().expect("object").remove(k);
    }
    let e = weights::load(hf_dir("tiny-qwen3", &c, "unused").path()).expect_err("refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("model.layers.0.self_attn.k_norm.weight") && msg.contains("not used"),
        "{msg}"
    );
}

#[test]
fn missing_checkpoint_tensor() {
    let mut c = config_of("tiny-llama3-rope");
    c["model_type"] = json!("qwen3");
    let e = weights::load(hf_dir("tiny-llama3-rope", &c, "missing").path()).expect_err("refused");
    assert!(format!("{e:#}").contains("q_norm.weight"), "{e:#}");
}

// ---- GGUF metadata --------------------------------------------------------------------

/// A one-layer llama-style GGUF (hidden 8, 2 heads, vocab 4) with `extra` metadata and tensors.
fn gguf(arch: &str, extra: &[(&str, GgufValue)], extra_tensors: &[&str], tag: &str) -> Scratch {
    let f32t = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor");
        QTensor::quantize(&t, GgmlDType::F32).expect("qtensor")
    };
    let k = |s: &str| format!("{arch}.{s}");
    let mut meta: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.into()),
        ),
        (k("embedding_length"), GgufValue::U32(8)),
        (k("block_count"), GgufValue::U32(1)),
        (k("feed_forward_length"), GgufValue::U32(16)),
        (k("attention.head_count"), GgufValue::U32(2)),
        (k("attention.head_count_kv"), GgufValue::U32(2)),
        (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-6)),
        (k("vocab_size"), GgufValue::U32(4)),
    ];
    meta.extend(extra.iter().map(|(key, v)| (k(key), v.clone())));
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), f32t(&[4, 8])),
        ("output_norm.weight".into(), f32t(&[8])),
    ];
    for (n, shape) in [
        ("attn_norm.weight", vec![8]),
        ("attn_q.weight", vec![8, 8]),
        ("attn_k.weight", vec![8, 8]),
        ("attn_v.weight", vec![8, 8]),
        ("attn_output.weight", vec![8, 8]),
        ("ffn_norm.weight", vec![8]),
        ("ffn_gate.weight", vec![16, 8]),
        ("ffn_up.weight", vec![16, 8]),
        ("ffn_down.weight", vec![8, 16]),
    ] {
        tensors.push((format!("blk.0.{n}"), f32t(&shape)));
    }
    for n in extra_tensors {
        tensors.push(((*n).into(), f32t(&[8])));
    }
    let file = Scratch::new(&format!("{tag}.gguf"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(file.path()).expect("create gguf"));
    let meta_refs: Vec<(&str, &GgufValue)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut w, &meta_refs, &tensor_refs).expect("write gguf");
    drop(w);
    file
}

fn gguf_refused(arch: &str, extra: &[(&str, GgufValue)], tensors: &[&str], needle: &str) {
    let control = gguf("llama", &[], &[], "control");
    weights::load_gguf(control.path()).expect("the control GGUF loads");
    let f = gguf(arch, extra, tensors, arch);
    let e = weights::load_gguf(f.path()).expect_err("refused");
    let msg = format!("{e:#}");
    assert!(msg.contains(needle), "error {msg:?} should name {needle:?}");
}

#[test]
fn gguf_unknown_architecture() {
    gguf_refused("falcon", &[], &[], "\"falcon\"");
}

#[test]
fn gguf_rope_scaling_type() {
    gguf_refused(
        "llama",
        &[("rope.scaling.type", GgufValue::String("linear".into()))],
        &[],
        "llama.rope.scaling.type = \"linear\"",
    );
}

#[test]
fn gguf_precomputed_rope_freqs() {
    gguf_refused("llama", &[], &["rope_freqs.weight"], "rope_freqs.weight");
}

#[test]
fn gguf_experts() {
    gguf_refused(
        "llama",
        &[("expert_count", GgufValue::U32(8))],
        &[],
        "llama.expert_count = 8",
    );
}

#[test]
fn gguf_sliding_window_on_llama() {
    gguf_refused(
        "llama",
        &[("attention.sliding_window", GgufValue::U32(4096))],
        &[],
        "llama.attention.sliding_window = 4096",
    );
}

#[test]
fn gguf_partial_rotary() {
    gguf_refused(
        "llama",
        &[("rope.dimension_count", GgufValue::U32(2))],
        &[],
        "llama.rope.dimension_count = 2",
    );
}

#[test]
fn gguf_unused_tensor() {
    gguf_refused(
        "llama",
        &[],
        &["blk.0.attn_output.bias"],
        "blk.0.attn_output.bias",
    );
}

#[test]
fn gguf_gemma3_head_dim_without_scalar() {
    gguf_refused(
        "gemma3",
        &[("attention.sliding_window", GgufValue::U32(4))],
        &[],
        "query_pre_attn_scalar",
    );
}
