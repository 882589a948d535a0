//! Token ids identical to Hugging Face (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) for the
//! strings in `tests/reference/goldens/<alias>.json`, written by `tests/reference/hf_scores.py`.

use std::path::{Path, PathBuf};

use scorer_engine::tokenizer::Tokenizer;
use serde_json::Value;

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
const SMOLLM: &str = "smollm2-135m-instruct-q4_1";
const GEMMA: &str = "gemma-3-270m-q4_k_m";

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

/// Every id a golden string encodes to decodes (alone and in sequence) as HF decodes it: byte
/// fallback pieces fuse back into their characters, "▁" back into spaces.
fn decode_round_trips(alias: &str, tok: &Tokenizer) {
    let gold = golden(alias);
    for case in gold["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = ids(&case["ids"]);
        let decoded = tok.decode(&ids).unwrap();
        let bos = tok.bos_token_id().map(|b| tok.id_to_token(b).unwrap());
        let without_bos = match &bos {
            Some(b) if gold["add_bos_token"].as_bool() == Some(true) => {
                decoded.strip_prefix(b.as_str()).unwrap_or(&decoded)
            }
            _ => &decoded,
        };
        // Only "▁" written in the text does not come back (it decodes to a space, as in HF).
        assert_eq!(
            without_bos,
            text.replace('\u{2581}', " "),
            "{alias}: {text:?} does not round-trip"
        );
        // Re-encoding the decoded text gives the same ids back.
        if !text.contains('\u{2581}') {
            assert_eq!(
                tok.encode(without_bos).unwrap(),
                ids,
                "{alias}: re-encode {text:?}"
            );
        }
    }
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

/// Gemma 3's SentencePiece GGUF (`tokenizer.ggml.model = "llama"`): BPE with byte fallback whose
/// merges are derived from the vocabulary, BOS 2 added, control and user-defined tokens whole.
#[test]
fn gemma3_sentencepiece_gguf_tokenizer_matches_hf() {
    let started = std::time::Instant::now();
    let tok = matches_hf(GEMMA);
    println!(
        "gemma tokenizer built and checked in {:.2?}",
        started.elapsed()
    );
    score_prompts_match(GEMMA, &tok);
    decode_round_trips(GEMMA, &tok);
    let gold = golden(GEMMA);
    assert_eq!(
        tok.encode("").unwrap(),
        vec![2],
        "BOS added to an empty text"
    );
    assert_eq!((tok.bos_token_id(), tok.eos_token_id()), (Some(2), Some(1)));
    assert_eq!(tok.encode("<start_of_turn>").unwrap(), vec![2, 105]);
    assert_eq!(tok.encode("<end_of_turn>").unwrap(), vec![2, 106]);
    assert_eq!(
        tok.encode(" Yes").unwrap(),
        vec![2, gold["space_yes_id"].as_u64().unwrap() as u32]
    );
    // A character outside the vocabulary falls back to its UTF-8 bytes (<0xF3> <0xB0> <0x80> <0x80>).
    let bytes: Vec<u32> = "\u{f0000}".bytes().map(|b| 238 + u32::from(b)).collect();
    assert_eq!(tok.encode("\u{f0000}").unwrap()[1..], bytes[..]);
    assert_eq!(tok.decode(&bytes).unwrap(), "\u{f0000}");
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

/// The other SentencePiece paths, on tiny GGUFs of a vocabulary trained by sentencepiece
/// (`tests/reference/tiny_sentencepiece.py`): `llama` (Llama 2 / Mistral: Metaspace, merges
/// ordered by the scores, `<unk>` special) and `phi3` (a prepended "▁" normalizer).
#[test]
fn tiny_sentencepiece_gguf_tokenizers_match_hf() {
    let goldens = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens");
    let gold: Value =
        serde_json::from_slice(&std::fs::read(goldens.join("tiny_sentencepiece.json")).unwrap())
            .unwrap();
    let files = gold["files"].as_object().unwrap();
    assert_eq!(files.len(), 2);
    for (name, entry) in files {
        let tok = Tokenizer::from_gguf(&goldens.join(name)).unwrap();
        assert_eq!(
            tok.vocab_size() as u64,
            entry["vocab_size"].as_u64().unwrap(),
            "{name}"
        );
        let mut failures = Vec::new();
        for case in entry["tokenization"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let got = tok.encode(text).unwrap();
            if got != ids(&case["ids"]) {
                failures.push(format!("{text:?}: got {got:?}, want {}", case["ids"]));
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
        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
        assert_eq!(tok.encode("").unwrap(), vec![1], "{name}: BOS <s> added");
    }
}

/// A GGUF tokenizer model the engine does not implement (here T5's Unigram) is refused by name,
/// never approximated by another one.
#[test]
fn unimplemented_gguf_tokenizer_model_is_refused_by_name() {
    let goldens = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens");
    let err = match Tokenizer::from_gguf(&goldens.join("tiny-unigram-t5.gguf")) {
        Ok(_) => panic!("a t5 (Unigram) GGUF tokenizer was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("tokenizer.ggml.model") && err.contains("\"t5\""),
        "error must name the field and its value: {err}"
    );
}
