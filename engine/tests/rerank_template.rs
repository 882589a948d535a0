//! The built-in Qwen3-Reranker template produces the model card's exact prompt ids (card: prefix ids +
//! `tokenizer(format_instruction(...))` ids + suffix ids), with the Qwen2.5 GGUF tokenizer, which has
//! Qwen3's base vocabulary. Goldens: `tests/reference/goldens/rerank_qwen3.json` (chat_templates.py).
//! Then the rerank preparation on top: the `/v1/score` job it makes, the document-length rule
//! (400, or `truncate`), which model gets which template, and the `Frontend`'s use of them.

use std::path::{Path, PathBuf};

use scorer_engine::frontend::Frontend;
use scorer_engine::rerank_template::{
    QWEN3_RERANKER_DEFAULT_INSTRUCTION, QWEN3_RERANKER_PREFIX, QWEN3_RERANKER_SUFFIX,
    RerankTemplate, RerankTemplateChoice, RerankTemplateError, RerankTemplateSpec,
    is_qwen3_reranker, prepare_rerank,
};
use scorer_engine::runtime::EngineConfig;
use scorer_engine::scoring::{Limits, prepare};
use scorer_engine::tokenizer::Tokenizer;
use scorer_engine::weights::Arch;
use scorer_protocol::rerank::RerankInput;
use scorer_protocol::{Items, LabelIds, Preparer, ScoreRequest, TextOrTokens};
use serde_json::Value;

fn qwen_tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&qwen_model()).unwrap()
}

fn qwen_model() -> PathBuf {
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
    p
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

const QWEN_VOCAB: usize = 151_936;

fn input(
    query: &str,
    documents: &[&str],
    instruction: Option<&str>,
    truncate: bool,
) -> RerankInput {
    RerankInput {
        query: query.into(),
        documents: documents.iter().map(|d| d.to_string()).collect(),
        instruction: instruction.map(str::to_string),
        truncate,
    }
}

/// The job a rerank request becomes holds the card's exact prompt ids, the [yes, no] labels and
/// softmax: it is the `/v1/score` job of the template's query and items.
#[test]
fn a_rerank_request_is_the_v1_score_job_of_the_card_prompts() {
    let gold = golden();
    let tok = qwen_tokenizer();
    let t = RerankTemplate::qwen3_reranker(&tok).unwrap();
    let limits = Limits::default();
    let yes = gold["yes_id"].as_u64().unwrap() as u32;
    let no = gold["no_id"].as_u64().unwrap() as u32;
    for case in gold["cases"].as_array().unwrap() {
        let q = case["query"].as_str().unwrap();
        let d = case["document"].as_str().unwrap();
        let instr = case["instruction"].as_str();
        let docs = [d, "another document"];
        let job = prepare_rerank(
            Some(&t),
            "m",
            &input(q, &docs, instr, false),
            &tok,
            QWEN_VOCAB,
            &limits,
        )
        .unwrap();
        assert_eq!(job.prompts[0], ids(&case["ids"]), "{q:?}/{d:?}");
        assert_eq!(job.labels, vec![vec![yes, no]; 2]);
        assert!(job.apply_softmax);
        assert_eq!(job.temperature, 1.0);
        let p = t.prompts(q, &docs, instr).unwrap();
        let by_hand = ScoreRequest {
            model: None,
            query: Some(TextOrTokens::Text(p.query)),
            items: Some(Items::Texts(p.items)),
            label_token_ids: Some(LabelIds::Shared(vec![yes.into(), no.into()])),
            apply_softmax: true,
            item_first: false,
            temperature: None,
            ..ScoreRequest::default()
        };
        let no_chat = Err(scorer_protocol::ValidationError::new("no chat template"));
        assert_eq!(
            job,
            prepare(&by_hand, &tok, &no_chat, QWEN_VOCAB, &limits).unwrap()
        );
    }
    let e = prepare_rerank(
        None,
        "m",
        &input("q", &["d"], None, false),
        &tok,
        QWEN_VOCAB,
        &limits,
    )
    .unwrap_err();
    assert!(e.message.contains("--rerank-template"), "{e}");
    let e = prepare_rerank(
        Some(&RerankTemplate::new(spec("{query}\n{document}", "yes"), &tok).unwrap()),
        "m",
        &input("q", &["d"], Some("an instruction"), false),
        &tok,
        QWEN_VOCAB,
        &limits,
    )
    .unwrap_err();
    assert!(e.message.contains("takes no \"instruction\""), "{e}");
}

#[test]
fn long_documents_are_refused_or_cut_at_a_token_boundary() {
    let tok = qwen_tokenizer();
    let t = RerankTemplate::qwen3_reranker(&tok).unwrap();
    let q = "What is the capital of China?";
    let len = |doc: &str| tok.encode(&t.prompt(q, doc, None).unwrap()).unwrap().len();
    let fixed = len("");
    let limits = Limits {
        max_prompt_tokens: fixed + 10,
        ..Limits::default()
    };
    let long = "Beijing is the capital of the People's Republic of China. ".repeat(8);
    let docs = ["Beijing.", long.as_str()];
    let e = prepare_rerank(
        Some(&t),
        "m",
        &input(q, &docs, None, false),
        &tok,
        QWEN_VOCAB,
        &limits,
    )
    .unwrap_err();
    assert!(
        e.message.starts_with("document 1: its prompt has")
            && e.message.contains(&format!("limit is {}", fixed + 10))
            && e.message.contains("\"truncate\": true"),
        "{e}"
    );

    let job = prepare_rerank(
        Some(&t),
        "m",
        &input(q, &docs, None, true),
        &tok,
        QWEN_VOCAB,
        &limits,
    )
    .unwrap();
    assert_eq!(
        job.prompts[0],
        tok.encode(&t.prompt(q, "Beijing.", None).unwrap()).unwrap()
    );
    let cut = &job.prompts[1];
    assert!(
        cut.len() <= fixed + 10 && cut.len() >= fixed + 5,
        "{} tokens",
        cut.len()
    );
    // The cut document is the long one's first k tokens (tokenized alone), for some k.
    let ends = tok.token_ends(&long).unwrap();
    let k = (1..=ends.len())
        .find(|&k| {
            tok.encode(&t.prompt(q, &long[..ends[k - 1]], None).unwrap())
                .unwrap()
                == *cut
        })
        .expect("the prompt of a token prefix of the document");
    assert!((5..=10).contains(&k), "{k} tokens kept");

    // Nothing to cut away: the template and query alone are over the limit.
    let tight = Limits {
        max_prompt_tokens: fixed,
        ..Limits::default()
    };
    let e = prepare_rerank(
        Some(&t),
        "m",
        &input(q, &docs, None, true),
        &tok,
        QWEN_VOCAB,
        &tight,
    )
    .unwrap_err();
    assert!(e.message.contains("truncating cannot help"), "{e}");
    // Other limits are /v1/score's own: more documents than --max-items.
    let few = Limits {
        max_items: 1,
        ..Limits::default()
    };
    let e = prepare_rerank(
        Some(&t),
        "m",
        &input(q, &docs, None, true),
        &tok,
        QWEN_VOCAB,
        &few,
    )
    .unwrap_err();
    assert!(e.message.contains("the limit is 1 items"), "{e}");
}

#[test]
fn the_built_in_template_is_for_qwen3_rerankers_only() {
    assert!(is_qwen3_reranker(
        Arch::Qwen3,
        Path::new("/m/Qwen3-Reranker-0.6B"),
        "x"
    ));
    assert!(is_qwen3_reranker(
        Arch::Qwen3,
        Path::new("/m/q.gguf"),
        "qwen3-RERANKER-4b"
    ));
    assert!(!is_qwen3_reranker(
        Arch::Qwen3,
        Path::new("/m/Qwen3-0.6B"),
        "qwen3"
    ));
    assert!(!is_qwen3_reranker(
        Arch::Qwen2,
        Path::new("/m/reranker"),
        "reranker"
    ));
    assert_eq!(
        RerankTemplateChoice::parse("qwen3-reranker"),
        RerankTemplateChoice::Qwen3Reranker
    );
    assert_eq!(
        RerankTemplateChoice::parse("t.json"),
        RerankTemplateChoice::File("t.json".into())
    );

    let tok = qwen_tokenizer();
    let choose = |c: &RerankTemplateChoice, arch, name: &str| {
        RerankTemplate::for_model(c, arch, Path::new(name), name, &tok)
    };
    let auto = RerankTemplateChoice::Auto;
    assert!(choose(&auto, Arch::Qwen2, "qwen2.5").unwrap().is_none());
    let t = choose(&auto, Arch::Qwen3, "Qwen3-Reranker-0.6B")
        .unwrap()
        .unwrap();
    assert_eq!(t.spec(), &RerankTemplate::qwen3_reranker_spec());
    let forced = choose(&RerankTemplateChoice::Qwen3Reranker, Arch::Qwen2, "qwen2.5").unwrap();
    assert_eq!(
        forced.unwrap().spec(),
        &RerankTemplate::qwen3_reranker_spec()
    );
    let missing = RerankTemplateChoice::File("/nonexistent/rerank.json".into());
    assert!(matches!(
        choose(&missing, Arch::Qwen2, "qwen2.5").unwrap_err(),
        RerankTemplateError::Read { .. }
    ));
}

/// The API process's view: a `Frontend` loads the template by the flag's rule, prepares reranks
/// through the `Preparer` trait, refuses them without a template, and refuses to load with a bad
/// template file (naming the unknown placeholder).
#[test]
fn the_frontend_serves_reranks_by_its_template() {
    let model = qwen_model();
    let alias = "qwen2.5-coder-0.5b-instruct-q4_k_m";
    let plain = Frontend::load(&EngineConfig::new(model.clone(), alias.into())).unwrap();
    assert!(plain.rerank_template().is_none());
    let req = input("q", &["d"], None, false);
    let e = Preparer::prepare_rerank(&plain, &req).unwrap_err();
    assert!(
        e.message.contains(alias) && e.message.contains("--rerank-template"),
        "{e}"
    );

    let mut cfg = EngineConfig::new(model.clone(), alias.into());
    cfg.rerank_template = RerankTemplateChoice::Qwen3Reranker;
    let served = Frontend::load(&cfg).unwrap();
    let job = Preparer::prepare_rerank(&served, &req).unwrap();
    let tok = qwen_tokenizer();
    let t = RerankTemplate::qwen3_reranker(&tok).unwrap();
    assert_eq!(
        job.prompts,
        vec![tok.encode(&t.prompt("q", "d", None).unwrap()).unwrap()]
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"template": "{query} {doc}", "yes": "yes", "no": "no"}"#,
    )
    .unwrap();
    cfg.rerank_template = RerankTemplateChoice::File(path);
    let e = Frontend::load(&cfg)
        .err()
        .expect("a bad template fails the load");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("rerank template") && msg.contains("{doc}"),
        "{msg}"
    );
}
