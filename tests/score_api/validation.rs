//! Plan 1.5: invalid token ids, missing parameters, empty inputs — refused with SGLang's
//! messages, or answered as SGLang answers them.

use super::*;

/// Plan 1.5: negative ids and ids at or past the vocabulary size, in labels, query or items, are
/// refused with SGLang's messages; the last id of the vocabulary is fine.
#[test]
fn test_score_invalid_token_ids() {
    let _serial = serial();
    let engine = &*QWEN_F32;
    let vocab = engine.model_config().vocab_size;
    assert_eq!(vocab, QWEN_VOCAB);
    for (body, message) in [
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [-1]}),
            "Token ID -1 is negative",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [999_999]}),
            "Token ID 999999 is out of vocabulary",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [vocab]}),
            "is out of vocabulary",
        ),
        (
            json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1], [vocab + 5]]}),
            "is out of vocabulary",
        ),
        (
            json!({"query": [1, vocab], "items": [[2]], "label_token_ids": [1]}),
            "is out of vocabulary",
        ),
        (
            json!({"query": [1], "items": [[2], [-7]], "label_token_ids": [1]}),
            "Token ID -7 is negative",
        ),
        (
            json!({"query": [1], "items": [[2, 999_999]], "label_token_ids": [1]}),
            "Token ID 999999 is out of vocabulary",
        ),
    ] {
        let msg = refused(engine, body.clone());
        assert!(msg.contains(message), "{body}: {msg}");
    }
    let edge = score(
        engine,
        json!({"query": [1, vocab - 1], "items": [[vocab - 1]], "label_token_ids": [0, vocab - 1]}),
    );
    assert_well_formed(&edge.scores, 1, 2, false);
}

/// Plan 1.5: a request without `label_token_ids` or without `items` is refused. A missing `query`
/// is an empty query (the items alone are the prompts), which the plan would refuse: SGLang's
/// type check refuses it; ours reads it as `""`, documented in docs/TESTING.md.
#[test]
fn test_score_missing_parameters() {
    let _serial = serial();
    let engine = &*QWEN_F32;
    for (body, message) in [
        (
            json!({"query": "q", "items": ["a"]}),
            "label_token_ids must be provided",
        ),
        (
            json!({"query": "q", "label_token_ids": [1]}),
            "items must be provided",
        ),
        (json!({"label_token_ids": [1]}), "items must be provided"),
        (json!({}), "label_token_ids must be provided"),
    ] {
        let msg = refused(engine, body.clone());
        assert!(msg.contains(message), "{body}: {msg}");
    }
    let no_query = score(
        engine,
        json!({"items": ["Hello world"], "label_token_ids": yes_no()}),
    );
    let empty_query = score(
        engine,
        json!({"query": "", "items": ["Hello world"], "label_token_ids": yes_no()}),
    );
    assert_eq!(no_query.scores, empty_query.scores);
}

/// Plan 1.5: `items: []` is not an error (no rows, no forward pass, no tokens); empty label lists
/// are refused; an empty prompt (empty query and empty item, text or ids) is refused.
#[test]
fn test_score_empty_inputs() {
    let _serial = serial();
    let engine = &*QWEN_F32;
    for body in [
        json!({"query": "q", "items": [], "label_token_ids": yes_no()}),
        json!({"query": [1, 2], "items": [], "label_token_ids": yes_no()}),
    ] {
        let before = engine.stats().expect("stats");
        let resp = score(engine, body);
        let after = engine.stats().expect("stats");
        assert!(resp.scores.is_empty());
        assert_eq!(resp.usage.prompt_tokens, 0);
        assert_eq!(
            after.forward_passes, before.forward_passes,
            "nothing to run"
        );
    }
    for (body, message) in [
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": []}),
            "must not be empty",
        ),
        (
            json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1], []]}),
            "must not be empty",
        ),
        (
            json!({"query": "", "items": [""], "label_token_ids": [1]}),
            "empty",
        ),
        (
            json!({"query": [], "items": [[]], "label_token_ids": [1]}),
            "empty",
        ),
    ] {
        let msg = refused(engine, body.clone());
        assert!(msg.contains(message), "{body}: {msg}");
    }
}
