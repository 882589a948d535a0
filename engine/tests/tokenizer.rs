//! Token ids identical to Hugging Face (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) for the
//! strings in `tests/reference/goldens/<alias>.json`, written by `tests/reference/hf_scores.py`.

use std::path::{Path, PathBuf};

use scorer_engine::tokenizer::Tokenizer;
use serde_json::Value;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
const SMOLLM: &str = "smollm2-135m-instruct-q4_1";

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

fn golden(alias: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/goldens")
        .join(format!("{alias}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every golden string encodes to HF's ids and decodes back to HF's text.
fn matches_hf(alias: &str) -> Tokenizer {
    let gold = golden(alias);
    let tok = Tokenizer::from_gguf(&model_path(alias)).unwrap();
    let cases = gold["tokenization"].as_array().unwrap();
    assert!(cases.len() >= 30, "need at least 30 golden strings");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text).unwrap();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
            continue;
        }
        let decoded = tok.decode(&got).unwrap();
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!(
                "{text:?}: decoded {decoded:?}, want {}",
                case["decoded"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{alias} differs from Hugging Face:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        tok.vocab_size() as u64,
        gold["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(
        tok.token_to_id("Yes"),
        gold["yes_id"].as_u64().map(|v| v as u32)
    );
    assert_eq!(
        tok.token_to_id("No"),
        gold["no_id"].as_u64().map(|v| v as u32)
    );
    tok
}

/// The prompt ids of every text score case are also what HF tokenized (query+item as one string).
fn score_prompts_match(alias: &str, tok: &Tokenizer) {
    let gold = golden(alias);
    for case in gold["score_cases"].as_array().unwrap() {
        let Some(query) = case["query"].as_str() else {
            continue;
        };
        let item_first = case["item_first"].as_bool().unwrap();
        for (item, want) in case["items"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["prompt_token_ids"].as_array().unwrap())
        {
            let item = item.as_str().unwrap();
            let text = if item_first {
                format!("{item}{query}")
            } else {
                format!("{query}{item}")
            };
            assert_eq!(
                tok.encode(&text).unwrap(),
                ids(want),
                "{alias} case {}: {text:?}",
                case["name"]
            );
        }
    }
}

#[test]
fn qwen2_gguf_tokenizer_matches_hf() {
    let tok = matches_hf(QWEN);
    score_prompts_match(QWEN, &tok);
    assert_eq!(tok.encode("Yes").unwrap(), vec![9454]);
    assert_eq!(tok.encode("No").unwrap(), vec![2753]);
    assert_eq!(
        tok.encode("").unwrap(),
        Vec::<u32>::new(),
        "Qwen2 adds no BOS"
    );
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(151644));
    assert_eq!(
        (tok.bos_token_id(), tok.eos_token_id()),
        (Some(151643), Some(151645))
    );
}

#[test]
fn smollm2_gguf_tokenizer_matches_hf() {
    let tok = matches_hf(SMOLLM);
    score_prompts_match(SMOLLM, &tok);
    assert_eq!(
        tok.encode("").unwrap(),
        Vec::<u32>::new(),
        "add_bos_token is false in this GGUF"
    );
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
    assert_eq!((tok.bos_token_id(), tok.eos_token_id()), (Some(1), Some(2)));
}

/// `tokenizer.json` directories (tiny BPEs saved by transformers; the llama one adds a BOS through
/// its post-processor) encode exactly as `AutoTokenizer.from_pretrained(dir)` does.
#[test]
fn hf_directory_tokenizers_match_hf() {
    let goldens = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens");
    let gold: Value =
        serde_json::from_slice(&std::fs::read(goldens.join("tiny_hf_models.json")).unwrap())
            .unwrap();
    for (name, entry) in gold.as_object().unwrap() {
        let tok = Tokenizer::from_hf_dir(&goldens.join(name)).unwrap();
        let cases = entry["tokenization"].as_array().unwrap();
        assert!(cases.len() >= 30);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text).unwrap(),
                ids(&case["ids"]),
                "{name}: {text:?}"
            );
        }
        let bos = tok.token_to_id("<|im_start|>");
        let adds_bos = entry["add_bos"].as_bool().unwrap();
        assert_eq!(
            tok.encode("").unwrap(),
            if adds_bos { vec![bos.unwrap()] } else { vec![] },
            "{name}"
        );
        assert_eq!(tok.bos_token_id(), bos, "{name}: bos id from config.json");
    }
}
