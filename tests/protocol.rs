//! Phase 3 of the test plan: the `/v1/score` request and response types on their own — what a
//! request must hold, what JSON a response is, and the fields that take either text or token ids.
//! No model needed: these run in milliseconds.

use scorer_protocol::{
    Items, LabelIds, ScoreRequest, ScoreResponse, TextOrTokens, Usage, ValidatedInput,
};
use serde_json::{Value, json};

fn parse(body: Value) -> ScoreRequest {
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{body} parses: {e}"))
}

fn rejected(body: Value) -> String {
    match parse(body.clone()).validate() {
        Ok(v) => panic!("{body} should be refused, validated to {v:?}"),
        Err(e) => e.message,
    }
}

/// Plan 3: a valid request keeps every field as given; a request missing what it needs is refused
/// with SGLang's message; defaults are SGLang's (`apply_softmax` false, `item_first` false,
/// temperature 1).
#[test]
fn test_scoring_request_validation() {
    let request = parse(json!({
        "model": "test-model",
        "query": "test query",
        "items": ["item1", "item2"],
        "label_token_ids": [1, 2, 3],
        "apply_softmax": true,
        "item_first": false,
    }));
    assert_eq!(request.model.as_deref(), Some("test-model"));
    assert_eq!(request.query, Some(TextOrTokens::Text("test query".into())));
    assert_eq!(
        request.items,
        Some(Items::Texts(vec!["item1".into(), "item2".into()]))
    );
    assert_eq!(
        request.label_token_ids,
        Some(LabelIds::Shared(vec![1, 2, 3]))
    );
    assert!(request.apply_softmax);
    assert!(!request.item_first);
    let v = request.validate().expect("valid");
    assert_eq!(
        v.input,
        ValidatedInput::Text {
            query: "test query",
            items: vec!["item1", "item2"]
        }
    );
    // A shared label list applies to every item.
    assert_eq!(v.labels, vec![vec![1, 2, 3]; 2]);
    assert_eq!(v.temperature, 1.0);

    // Defaults.
    let minimal = parse(json!({"query": "q", "items": ["a"], "label_token_ids": [5]}));
    assert_eq!(minimal.model, None);
    assert!(!minimal.apply_softmax && !minimal.item_first);
    let v = minimal.validate().expect("valid");
    assert!(!v.apply_softmax && !v.item_first);
    assert_eq!(v.temperature, 1.0);

    // `ScoringRequest(model="test-model")` alone: nothing to score.
    let bare = parse(json!({"model": "test-model"}));
    assert!(
        bare.validate()
            .expect_err("a request with only a model is refused")
            .message
            .contains("label_token_ids must be provided")
    );
    for (body, message) in [
        (
            json!({"query": "q", "items": ["a"]}),
            "label_token_ids must be provided",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": []}),
            "label_token_ids must not be empty",
        ),
        (
            json!({"query": "q", "label_token_ids": [1]}),
            "items must be provided",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [-3]}),
            "Token ID -3 is negative",
        ),
        (
            json!({"query": [1, -2], "items": [[3]], "label_token_ids": [1]}),
            "Token ID -2 is negative",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [7, 8, 7]}),
            "token ID 7 appears more than once",
        ),
        (
            json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1], [2], [3]]}),
            "label_token_ids has 3 lists but there are 2 items",
        ),
        (
            json!({"query": "q", "items": ["a", "b"], "label_token_ids": [[1], []]}),
            "label_token_ids must not be empty",
        ),
        (
            json!({"query": "q", "items": [[1, 2]], "label_token_ids": [1]}),
            "Invalid combination of query/items types",
        ),
        (
            json!({"query": [1, 2], "items": ["a"], "label_token_ids": [1]}),
            "Invalid combination of query/items types",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [1], "temperature": 0.0}),
            "temperature must be a positive number",
        ),
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [1], "temperature": -1.0}),
            "temperature must be a positive number",
        ),
        // Larger than any u32 id: out of every vocabulary before the engine even looks.
        (
            json!({"query": "q", "items": ["a"], "label_token_ids": [4_294_967_296_i64]}),
            "out of vocabulary",
        ),
    ] {
        let got = rejected(body.clone());
        assert!(
            got.contains(message),
            "{body}: got {got:?}, want {message:?}"
        );
    }

    // Wrong JSON types never reach validation: the body does not deserialize at all.
    for body in [
        json!({"query": 5, "items": ["a"], "label_token_ids": [1]}),
        json!({"query": "q", "items": 5, "label_token_ids": [1]}),
        json!({"query": "q", "items": ["a"], "label_token_ids": "yes"}),
        json!({"query": "q", "items": ["a"], "label_token_ids": [1.5]}),
        json!({"query": "q", "items": ["a", [1]], "label_token_ids": [1]}),
        json!({"query": "q", "items": ["a"], "label_token_ids": [1], "apply_softmax": "yes"}),
    ] {
        assert!(
            serde_json::from_value::<ScoreRequest>(body.clone()).is_err(),
            "{body} should not deserialize"
        );
    }

    // What validation allows on purpose (SGLang's behaviour): no items to score, an empty query.
    let v = parse(json!({"query": "q", "items": [], "label_token_ids": [1]}));
    assert!(v.validate().expect("items: [] is valid").labels.is_empty());
    let v = parse(json!({"query": "", "items": ["a"], "label_token_ids": [1]}));
    v.validate().expect("an empty query is valid");
}

/// Plan 3: a response is always the four SGLang fields (nothing is dropped when `scores` is
/// empty, `usage.completion_tokens` is always there and 0); a request serializes without the
/// optional fields it does not set (serde's `exclude_none`), and both survive a JSON round trip.
#[test]
fn test_scoring_response_serialization() {
    let resp = ScoreResponse::new(vec![vec![0.25, 0.75], vec![0.5, 0.5]], "m", 9);
    let value = serde_json::to_value(&resp).expect("serializes");
    assert_eq!(
        value,
        json!({
            "scores": [[0.25, 0.75], [0.5, 0.5]],
            "model": "m",
            "usage": {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9},
            "object": "scoring"
        })
    );
    let back: ScoreResponse = serde_json::from_value(value).expect("deserializes");
    assert_eq!(back, resp);

    // Empty scores are an empty list, not an omitted field: clients index `scores` blindly.
    let empty = serde_json::to_value(ScoreResponse::new(Vec::new(), "m", 0)).expect("json");
    assert_eq!(empty["scores"], json!([]));
    assert_eq!(
        empty["usage"],
        json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    );
    assert_eq!(
        Usage::prompt_only(12),
        Usage {
            prompt_tokens: 12,
            completion_tokens: 0,
            total_tokens: 12
        }
    );

    // Scores keep full f64 precision through JSON.
    let precise = ScoreResponse::new(vec![vec![0.123_456_789_012_345_67, 1e-12]], "m", 1);
    let text = serde_json::to_string(&precise).expect("json");
    let back: ScoreResponse = serde_json::from_str(&text).expect("parse");
    assert_eq!(back.scores, precise.scores);

    // A request omits every optional field it leaves unset, and keeps the booleans.
    let minimal = parse(json!({"items": ["a"], "label_token_ids": [1]}));
    let value = serde_json::to_value(&minimal).expect("serializes");
    let keys: Vec<&str> = value
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["apply_softmax", "item_first", "items", "label_token_ids"],
        "model, query and temperature are omitted when unset: {value}"
    );
    assert_eq!(value["apply_softmax"], false);

    let full = json!({
        "model": "m", "query": "q", "items": ["a", "b"], "label_token_ids": [[1], [2, 3]],
        "apply_softmax": true, "item_first": true, "temperature": 0.5
    });
    let parsed = parse(full.clone());
    assert_eq!(serde_json::to_value(&parsed).expect("json"), full);
}

/// Plan 3 ("str | list[int] | None"): every field that takes text or token ids accepts each form,
/// reads back as the right variant, and serializes to the JSON it came from.
#[test]
fn test_scoring_request_type_hints() {
    let round_trip = |body: Value| -> ScoreRequest {
        let parsed = parse(body.clone());
        assert_eq!(
            serde_json::to_value(&parsed).expect("serializes"),
            body,
            "round trip"
        );
        parsed
    };
    let base = |query: Value, items: Value, labels: Value| {
        json!({"query": query, "items": items, "label_token_ids": labels,
               "apply_softmax": false, "item_first": false})
    };

    // query: str
    let r = round_trip(base(json!("q"), json!(["a"]), json!([1])));
    assert_eq!(r.query, Some(TextOrTokens::Text("q".into())));
    // query: list[int] (the empty list is a token query, not text)
    let r = round_trip(base(json!([1, 2, 3]), json!([[4]]), json!([1])));
    assert_eq!(r.query, Some(TextOrTokens::Tokens(vec![1, 2, 3])));
    let r = round_trip(base(json!([]), json!([[4]]), json!([1])));
    assert_eq!(r.query, Some(TextOrTokens::Tokens(Vec::new())));
    // query: None
    let r = parse(json!({"items": ["a"], "label_token_ids": [1]}));
    assert_eq!(r.query, None);
    // A missing query reads as empty text (so text items validate, token items too).
    assert_eq!(
        r.validate().expect("valid").input,
        ValidatedInput::Text {
            query: "",
            items: vec!["a"]
        }
    );

    // items: str (one item), list[str], list[list[int]]
    let r = round_trip(base(json!("q"), json!("one"), json!([1])));
    assert_eq!(r.items, Some(Items::One("one".into())));
    assert_eq!(r.validate().expect("valid").labels.len(), 1);
    let r = round_trip(base(json!("q"), json!(["a", "", "b"]), json!([1])));
    assert_eq!(
        r.items,
        Some(Items::Texts(vec!["a".into(), String::new(), "b".into()]))
    );
    let r = round_trip(base(json!([1]), json!([[2, 3], [], [4]]), json!([1])));
    assert_eq!(
        r.items,
        Some(Items::Tokens(vec![vec![2, 3], Vec::new(), vec![4]]))
    );
    match r.validate().expect("valid").input {
        ValidatedInput::Tokens { query, items } => {
            assert_eq!(query, vec![1]);
            assert_eq!(items, vec![vec![2, 3], vec![], vec![4]]);
        }
        other => panic!("token input read as {other:?}"),
    }

    // label_token_ids: list[int] or list[list[int]]
    let r = round_trip(base(json!("q"), json!(["a", "b"]), json!([1, 2])));
    assert_eq!(r.label_token_ids, Some(LabelIds::Shared(vec![1, 2])));
    let r = round_trip(base(json!("q"), json!(["a", "b"]), json!([[1, 2], [3]])));
    assert_eq!(
        r.label_token_ids,
        Some(LabelIds::PerItem(vec![vec![1, 2], vec![3]]))
    );
    assert_eq!(
        r.validate().expect("valid").labels,
        vec![vec![1, 2], vec![3]]
    );

    // temperature: float | None; an integer literal is a float too.
    let r = parse(
        json!({"query": "q", "items": ["a"], "label_token_ids": [1], "temperature": 2,
            "apply_softmax": true}),
    );
    assert_eq!(r.temperature, Some(2.0));
    assert_eq!(r.validate().expect("valid").temperature, 2.0);
}
