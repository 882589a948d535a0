//! The built-in Qwen3-Reranker template produces the model card's exact prompt ids (card: prefix ids +
//! `tokenizer(format_instruction(...))` ids + suffix ids), with the Qwen2.5 GGUF tokenizer, which has
//! Qwen3's base vocabulary. Goldens: `tests/reference/goldens/rerank_qwen3.json` (chat_templates.py).

use std::path::{Path, PathBuf};

use scorer_engine::rerank_template::{
    QWEN3_RERANKER_DEFAULT_INSTRUCTION, QWEN3_RERANKER_PREFIX, QWEN3_RERANKER_SUFFIX,
    RerankTemplate, RerankTemplateError, RerankTemplateSpec,
};
use scorer_engine::tokenizer::Tokenizer;
use serde_json::Value;

fn qwen_tokenizer() -> Tokenizer {
    let home = std::env::var_os("SCORER_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/scorer")
        });
    let p = home.join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.is_file(),
        "model {} missing: run `scorer fetch` first",
        p.display()
    );
    Tokenizer::from_gguf(&p).unwrap()
}

fn golden() -> Value {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens/rerank_qwen3.json");
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

#[test]
fn qwen3_reranker_prompt_ids_match_the_model_card() {
    let gold = golden();
    let tok = qwen_tokenizer();
    let t = RerankTemplate::qwen3_reranker(&tok).unwrap();
    assert_eq!(gold["prefix"].as_str().unwrap(), QWEN3_RERANKER_PREFIX);
    assert_eq!(gold["suffix"].as_str().unwrap(), QWEN3_RERANKER_SUFFIX);
    assert_eq!(
        gold["default_instruction"].as_str().unwrap(),
        QWEN3_RERANKER_DEFAULT_INSTRUCTION
    );
    let yes = gold["yes_id"].as_u64().unwrap() as u32;
    let no = gold["no_id"].as_u64().unwrap() as u32;
    assert_eq!(t.label_token_ids(), [yes, no]);
    // Qwen2.5's vocabulary has no <think> token (Qwen3 adds it); the prompt ids still match because
    // both sides tokenize the same text.
    assert_eq!(gold["think_is_single_token"], Value::Bool(false));
    assert_eq!(
        tok.encode_without_specials("<think>").unwrap(),
        ids(&gold["think_ids"])
    );

    for case in gold["cases"].as_array().unwrap() {
        let q = case["query"].as_str().unwrap();
        let d = case["document"].as_str().unwrap();
        let instr = case["instruction"].as_str();
        let want = ids(&case["ids"]);
        let text = t.prompt(q, d, instr).unwrap();
        assert_eq!(
            text,
            case["formatted"].as_str().unwrap(),
            "{q:?}/{d:?}: text"
        );
        assert_eq!(
            tok.encode(&text).unwrap(),
            want,
            "{q:?}/{d:?}: ids of the whole prompt"
        );
        // The /v1/score split: query string + item string, tokenized once or separately, gives the
        // same ids, so the shared part is a token-level prefix of every document's prompt.
        let p = t.prompts(q, &[d, "another document"], instr).unwrap();
        assert_eq!(
            tok.encode(&format!("{}{}", p.query, p.items[0])).unwrap(),
            want
        );
        let mut split = tok.encode(&p.query).unwrap();
        split.extend(tok.encode(&p.items[0]).unwrap());
        assert_eq!(split, want, "{q:?}/{d:?}: split at the document");
        assert!(p.items[1].starts_with("<Document>: another document"));
        assert!(
            p.query.ends_with(&format!("<Query>: {q}\n")),
            "{:?}",
            p.query
        );
        assert_eq!(p.label_token_ids, [yes, no]);
    }
}

fn spec(template: &str, yes: &str) -> RerankTemplateSpec {
    RerankTemplateSpec {
        prefix: "P{not a placeholder}\n".into(),
        template: template.into(),
        suffix: "\nAnswer:".into(),
        yes: yes.into(),
        no: "no".into(),
        default_instruction: None,
    }
}

#[test]
fn template_files_are_checked_at_load() {
    let tok = qwen_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    std::fs::write(
        &path,
        r#"{"prefix": "Q: ", "template": "{query}\nD: {document}\nRelevant?", "suffix": " ", "yes": "yes", "no": "no"}"#,
    )
    .unwrap();
    let t = RerankTemplate::from_file(&path, &tok).unwrap();
    let p = t.prompts("q1", &["d1", "d2"], None).unwrap();
    assert_eq!(p.query, "Q: q1\n");
    assert_eq!(p.items, vec!["D: d1\nRelevant? ", "D: d2\nRelevant? "]);
    assert_eq!(
        t.prompts("q", &["d"], Some("x")).unwrap_err(),
        RerankTemplateError::UnexpectedInstruction
    );

    std::fs::write(
        &path,
        r#"{"template": "{document}", "yes": "yes", "no": "no", "extra": 1}"#,
    )
    .unwrap();
    let e = RerankTemplate::from_file(&path, &tok).unwrap_err();
    assert!(
        matches!(&e, RerankTemplateError::Read { detail, .. } if detail.contains("extra")),
        "{e}"
    );

    let e = RerankTemplate::new(spec("{query} {doc}", "yes"), &tok).unwrap_err();
    assert_eq!(
        e,
        RerankTemplateError::UnknownPlaceholder { name: "doc".into() }
    );
    let e = RerankTemplate::new(spec("{query}", "yes"), &tok).unwrap_err();
    assert!(e.to_string().contains("exactly once"), "{e}");
    let e = RerankTemplate::new(spec("{document}{document}", "yes"), &tok).unwrap_err();
    assert!(e.to_string().contains("found 2"), "{e}");
    let e = RerankTemplate::new(spec("{document}", "definitely"), &tok).unwrap_err();
    match &e {
        RerankTemplateError::LabelNotOneToken { word, ids, .. } => {
            assert_eq!(word, "definitely");
            assert!(ids.len() > 1);
        }
        other => panic!("expected LabelNotOneToken, got {other:?}"),
    }
    assert!(e.to_string().contains("exactly one"), "{e}");

    // {instruction} without a default: required per request.
    let t = RerankTemplate::new(spec("{instruction}|{query}|{document}", "yes"), &tok).unwrap();
    assert_eq!(
        t.prompts("q", &["d"], None).unwrap_err(),
        RerankTemplateError::MissingInstruction
    );
    // No line break before {document}: the split moves the trailing space into the item.
    let t2 = RerankTemplate::new(spec("{query} => {document}", "yes"), &tok).unwrap();
    let p2 = t2.prompts("q", &["d"], None).unwrap();
    assert_eq!(
        (p2.query.as_str(), p2.items[0].as_str()),
        ("P{not a placeholder}\nq =>", " d\nAnswer:")
    );
    let p = t.prompts("q", &["d"], Some("I")).unwrap();
    assert_eq!(p.query, "P{not a placeholder}\nI|q|");
    assert_eq!(p.items, vec!["d\nAnswer:"]);
}
