//! Chat templates rendered from each fetched GGUF's `tokenizer.chat_template` equal transformers'
//! `apply_chat_template` byte for byte, and tokenize to the same ids; the `/v1/score`
//! `query_messages` rule gives the prompts `tests/reference/chat_templates.py` checked against
//! `continue_final_message=True`. Goldens: `tests/reference/goldens/chat_templates.json`.

use std::path::{Path, PathBuf};

use scorer_engine::chat_template::{ChatTemplate, ChatTemplateError, SpecialTokens};
use scorer_engine::tokenizer::Tokenizer;
use scorer_engine::weights::gguf::GgufFile;
use scorer_protocol::chat::ChatMessage;
use serde_json::Value;

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

fn goldens() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/goldens/chat_templates.json");
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

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).unwrap()
}

fn special(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| s.as_str()).map(str::to_string)
}

fn check_model(alias: &str) {
    let gold = &goldens()["models"][alias];
    let path = model_path(alias);
    let t0 = std::time::Instant::now();
    let template = ChatTemplate::from_gguf(&path)
        .unwrap()
        .expect("the GGUF has a chat template");
    let tok = Tokenizer::from_gguf(&path).unwrap();
    eprintln!("{alias}: template + tokenizer loaded in {:?}", t0.elapsed());

    let want = &gold["special_tokens"];
    let got = template.special_tokens();
    assert_eq!(got.bos_token, special(want, "bos_token"), "bos_token");
    assert_eq!(got.eos_token, special(want, "eos_token"), "eos_token");
    assert_eq!(got.unk_token, special(want, "unk_token"), "unk_token");
    assert_eq!(got.pad_token, special(want, "pad_token"), "pad_token");
    // The source is the one transformers read.
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(
        g.meta_string("tokenizer.chat_template").unwrap().as_deref(),
        gold["chat_template"].as_str()
    );

    let convs = gold["conversations"].as_array().unwrap();
    assert!(convs.len() >= 5);
    for conv in convs {
        let name = conv["name"].as_str().unwrap();
        let msgs = messages(&conv["messages"]);
        for (key, generation) in [("plain", false), ("generation", true)] {
            let text = template.render(&msgs, generation).unwrap();
            assert_eq!(
                text,
                conv[key]["text"].as_str().unwrap(),
                "{alias} {name} {key}: text"
            );
            assert_eq!(
                tok.encode_without_specials(&text).unwrap(),
                ids(&conv[key]["ids"]),
                "{alias} {name} {key}: ids"
            );
        }
    }
    let by_name = |n: &str| convs.iter().find(|c| c["name"] == n).unwrap();
    for sp in gold["score_prompts"].as_array().unwrap() {
        let msgs = messages(&by_name(sp["conversation"].as_str().unwrap())["messages"]);
        let prompt = template
            .score_prompt(&msgs, sp["item"].as_str().unwrap())
            .unwrap();
        assert_eq!(prompt, sp["prompt"].as_str().unwrap());
        assert_eq!(
            tok.encode_without_specials(&prompt).unwrap(),
            ids(&sp["ids"])
        );
    }
}

#[test]
fn qwen25_chat_template_matches_transformers() {
    check_model("qwen2.5-coder-0.5b-instruct-q4_k_m");
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    check_model("smollm2-135m-instruct-q4_1");
}

/// Gemma 3 270M is a base model: its GGUF has no `tokenizer.chat_template` (transformers agrees:
/// `chat_template` is null), so there is nothing to render and a `query_messages` request must be
/// refused with [`ChatTemplateError::Missing`].
#[test]
fn gemma_base_model_has_no_chat_template() {
    let alias = "gemma-3-270m-q4_k_m";
    assert!(goldens()["models"][alias]["chat_template"].is_null());
    let path = model_path(alias);
    assert!(ChatTemplate::for_model(&path).unwrap().is_none());
    let g = GgufFile::open(&path).unwrap();
    let s = SpecialTokens::from_gguf(&g).unwrap();
    let want = &goldens()["models"][alias]["special_tokens"];
    assert_eq!(s.bos_token, special(want, "bos_token"));
    assert_eq!(s.eos_token, special(want, "eos_token"));
    let e =
        ChatTemplateError::Missing(format!("{} has no tokenizer.chat_template", path.display()));
    assert!(e.is_request_error());
}
