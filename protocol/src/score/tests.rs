//! Unit tests of the `/v1/score` contract's structural validation.

use super::*;

fn req(json: serde_json::Value) -> ScoreRequest {
    serde_json::from_value(json).expect("request parses")
}

#[test]
fn text_request_validates() {
    let r = req(serde_json::json!({
        "query": "I pledge allegiance", "items": ["", " to"], "label_token_ids": [1, 2]
    }));
    let v = r.validate().expect("valid");
    assert_eq!(
        v.input,
        ValidatedInput::Text {
            query: "I pledge allegiance",
            items: vec!["", " to"]
        }
    );
    assert_eq!(v.labels, vec![vec![1, 2], vec![1, 2]]);
    assert!(!v.apply_softmax);
    assert_eq!(v.temperature, 1.0);
}

#[test]
fn errors_carry_sglang_messages() {
    let cases = [
        (
            serde_json::json!({"query": "q", "items": ["a"]}),
            "label_token_ids must be provided",
        ),
        (
            serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": []}),
            "must not be empty",
        ),
        (
            serde_json::json!({"query": "q", "label_token_ids": [1]}),
            "items must be provided",
        ),
        (
            serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [-1]}),
            "Token ID -1 is negative",
        ),
        (
            serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1, 1]}),
            "must be unique",
        ),
        (
            serde_json::json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1], [2], [3]]}),
            "one list per item",
        ),
        (
            serde_json::json!({"query": "q", "items": [[1, 2]], "label_token_ids": [1]}),
            "Invalid combination",
        ),
        (
            serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1], "temperature": 0.0}),
            "temperature",
        ),
    ];
    for (body, msg) in cases {
        let err = req(body.clone()).validate().expect_err("invalid");
        assert!(err.message.contains(msg), "{body}: {}", err.message);
    }
}

#[test]
fn nul_characters_are_refused_where_they_are() {
    let cases = [
        (
            serde_json::json!({"query": "a\u{0}", "items": ["x"], "label_token_ids": [1]}),
            "query",
        ),
        (
            serde_json::json!({"query": "a", "items": ["x", "\u{0}"], "label_token_ids": [1]}),
            "items[1]",
        ),
        (
            serde_json::json!({"query": "a", "items": "\u{0}", "label_token_ids": [1]}),
            "items[0]",
        ),
    ];
    for (body, field) in cases {
        let err = req(body.clone()).validate().expect_err("NUL refused");
        assert!(err.message.starts_with(field), "{body}: {}", err.message);
        assert!(err.message.contains("NUL"), "{}", err.message);
    }
    let body = serde_json::json!({"metadata": {"k": ["ok", "b\u{0}"]}, "x": 1});
    let err = refuse_nul_in_json(&body).expect_err("NUL refused");
    assert!(
        err.message.starts_with("$.metadata.k[1]"),
        "{}",
        err.message
    );
    let key = serde_json::json!({"a\u{0}": 1});
    assert!(refuse_nul_in_json(&key).is_err());
    assert!(refuse_nul_in_json(&serde_json::json!({"a": ["b", {"c": "d"}]})).is_ok());
}

#[test]
fn a_job_from_the_queue_is_checked_again() {
    let good = ScoreJob {
        prompts: vec![vec![1, 2]],
        labels: vec![vec![3]],
        apply_softmax: true,
        temperature: 1.0,
        outputs: Outputs::default(),
    };
    assert!(good.check().is_ok());
    for (bad, what) in [
        (
            ScoreJob {
                temperature: 0.0,
                ..good.clone()
            },
            "temperature",
        ),
        (
            ScoreJob {
                temperature: f64::NAN,
                ..good.clone()
            },
            "temperature",
        ),
        (
            ScoreJob {
                labels: vec![],
                ..good.clone()
            },
            "label lists",
        ),
        (
            ScoreJob {
                prompts: vec![vec![]],
                ..good.clone()
            },
            "prompt is empty",
        ),
        (
            ScoreJob {
                labels: vec![vec![]],
                ..good.clone()
            },
            "label list is empty",
        ),
    ] {
        let err = bad.check().expect_err("refused");
        assert!(err.message.contains(what), "{}", err.message);
    }
    let fine = ScoreOutput {
        scores: vec![vec![0.5, 0.5]],
        prompt_tokens: 2,
        token_logprobs: Some(vec![vec![-0.7, -0.7]]),
        pooled_hidden_states: Some(vec![vec![0.25, -1.0]]),
    };
    assert!(fine.check_finite().is_ok());
    let nan = ScoreOutput {
        scores: vec![vec![0.5, f64::NAN]],
        ..fine.clone()
    };
    assert!(nan.check_finite().is_err());
    let inf = ScoreOutput {
        token_logprobs: Some(vec![vec![f64::NEG_INFINITY, -0.7]]),
        ..fine.clone()
    };
    assert!(inf.check_finite().is_err());
    let hidden = ScoreOutput {
        pooled_hidden_states: Some(vec![vec![f32::NAN, 0.0]]),
        ..fine.clone()
    };
    assert!(hidden.check_finite().is_err());
}

#[test]
fn empty_items_is_not_an_error() {
    for body in [
        serde_json::json!({"query": "q", "items": [], "label_token_ids": [1]}),
        serde_json::json!({"query": [1, 2], "items": [], "label_token_ids": [1]}),
    ] {
        let r = req(body);
        let v = r.validate().expect("valid");
        assert!(v.labels.is_empty());
    }
}

#[test]
fn response_serializes_in_sglang_shape() {
    let r = ScoreResponse::new(vec![vec![0.25, 0.75]], "m", 7);
    let v = serde_json::to_value(&r).expect("serializes");
    assert_eq!(
        v,
        serde_json::json!({"scores": [[0.25, 0.75]], "model": "m", "object": "scoring",
            "usage": {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}})
    );
}

#[test]
fn temperature_other_than_one_needs_apply_softmax() {
    let body = |t: f64, softmax: bool| {
        req(
            serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1],
            "temperature": t, "apply_softmax": softmax}),
        )
    };
    let err = body(0.5, false).validate().expect_err("refused");
    assert!(err.message.contains("apply_softmax"), "{}", err.message);
    assert_eq!(body(0.5, true).validate().expect("valid").temperature, 0.5);
    assert!(body(1.0, false).validate().is_ok(), "1 is the default");
    for bad in [0.0, -2.0] {
        let err = body(bad, true).validate().expect_err("refused");
        assert!(err.message.contains("positive"), "{}", err.message);
    }
}

#[test]
fn output_flags_reach_the_validated_request() {
    let r = req(
        serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1],
        "return_token_logprobs": true, "return_pooled_hidden_states": true}),
    );
    let v = r.validate().expect("valid");
    assert_eq!(
        v.outputs,
        Outputs {
            token_logprobs: true,
            pooled_hidden_states: true
        }
    );
    let plain = req(serde_json::json!({"query": "q", "items": ["a"], "label_token_ids": [1]}));
    assert_eq!(plain.validate().expect("valid").outputs, Outputs::default());
    // Unset flags are not written back: the request serializes as it came.
    assert!(
        serde_json::to_value(&plain)
            .expect("serializes")
            .get("return_token_logprobs")
            .is_none()
    );
}

#[test]
fn query_messages_rules() {
    let chat = serde_json::json!([{"role": "user", "content": "Is Rust a language?"}]);
    let ok = req(
        serde_json::json!({"query_messages": chat, "items": [" Yes", " No"],
        "label_token_ids": [1, 2]}),
    );
    let v = ok.validate().expect("valid");
    match &v.input {
        ValidatedInput::Chat { messages, items } => {
            assert_eq!(messages.len(), 1);
            assert_eq!(messages[0].role, "user");
            assert_eq!(items, &vec![" Yes", " No"]);
        }
        other => panic!("not a chat input: {other:?}"),
    }
    assert_eq!(v.labels.len(), 2);
    let cases = [
        (
            serde_json::json!({"query": "q", "query_messages": chat, "items": ["a"], "label_token_ids": [1]}),
            "cannot both be given",
        ),
        (
            serde_json::json!({"query_messages": chat, "items": ["a"], "label_token_ids": [1], "item_first": true}),
            "item_first",
        ),
        (
            serde_json::json!({"query_messages": [], "items": ["a"], "label_token_ids": [1]}),
            "must not be empty",
        ),
        (
            serde_json::json!({"query_messages": chat, "items": [[1, 2]], "label_token_ids": [1]}),
            "must be text",
        ),
        (
            serde_json::json!({"query_messages": [{"role": "user", "content": "a\u{0}"}], "items": ["a"], "label_token_ids": [1]}),
            "query_messages[0].content",
        ),
        (
            serde_json::json!({"query_messages": chat, "items": ["a", "b"], "label_token_ids": [[1]]}),
            "one list per item",
        ),
    ];
    for (body, msg) in cases {
        let err = req(body.clone()).validate().expect_err("invalid");
        assert!(err.message.contains(msg), "{body}: {}", err.message);
    }
}
