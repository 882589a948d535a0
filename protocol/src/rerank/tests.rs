//! Every rerank shape: serde round trips of what clients send, validation messages, sorting, ties,
//! `top_n` and the conversion from `/v1/score` rows.

use super::*;
use serde_json::json;

#[test]
fn jina_and_cohere_requests_parse_both_document_shapes() {
    let r: RerankRequest = serde_json::from_value(json!({
        "model": "jina-reranker", "query": "q",
        "documents": ["plain", {"text": "object"}],
        "top_n": 1, "return_documents": false, "instruction": "find"
    }))
    .unwrap();
    assert_eq!(r.documents[0], RerankDocument::Text("plain".into()));
    assert_eq!(r.documents[1].text(), "object");
    assert_eq!(r.instruction.as_deref(), Some("find"));
    let back: RerankRequest = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
    assert_eq!(back, r);
    // Cohere v2: only model, query, documents (strings), top_n.
    let c: RerankRequest = serde_json::from_value(
        json!({"model": "rerank-v3.5", "query": "q", "documents": ["a", "b"], "top_n": 5}),
    )
    .unwrap();
    let v = c.validate(RerankFlavor::Cohere).unwrap();
    assert_eq!(
        (v.top_n, v.return_documents, v.documents),
        (2, false, vec!["a", "b"])
    );
    assert!(c.validate(RerankFlavor::Jina).unwrap().return_documents);
    assert!(serde_json::from_value::<RerankRequest>(json!({"query": "q"})).is_err());
    assert!(
        serde_json::from_value::<RerankRequest>(
            json!({"query": "q", "documents": [{"title": "x"}]})
        )
        .is_err()
    );
}

#[test]
fn validation_messages() {
    let mut r: RerankRequest =
        serde_json::from_value(json!({"query": "q", "documents": []})).unwrap();
    assert_eq!(
        r.validate(RerankFlavor::Jina).unwrap_err().message,
        "documents must not be empty"
    );
    r.documents = vec![RerankDocument::Text("d".into())];
    for n in [0, -3] {
        r.top_n = Some(n);
        assert_eq!(
            r.validate(RerankFlavor::Jina).unwrap_err().message,
            format!("top_n must be a positive integer, got {n}")
        );
    }
    r.top_n = Some(i64::MAX);
    assert_eq!(r.validate(RerankFlavor::Jina).unwrap().top_n, 1);
    let t: TeiRerankRequest = serde_json::from_value(json!({"query": "q", "texts": []})).unwrap();
    assert_eq!(t.validate().unwrap_err().message, "texts must not be empty");
}

#[test]
fn ranking_sorts_best_first_and_keeps_ties_in_order() {
    let rows = vec![
        vec![0.2, 0.8],
        vec![0.9, 0.1],
        vec![0.2, 0.8],
        vec![0.5, 0.5],
        vec![0.9, 0.1],
    ];
    let r = rank_rows(&rows).unwrap();
    assert_eq!(
        r.iter().map(|x| x.index).collect::<Vec<_>>(),
        vec![1, 4, 3, 0, 2]
    );
    assert!((r[0].raw_score - (0.9f64 / 0.1).ln()).abs() < 1e-12);
    assert_eq!(r[2].raw_score, 0.0);
    assert_eq!(
        rank_rows(&[vec![0.5, 0.5], vec![1.0]]).unwrap_err(),
        ScoreRowShapeError { index: 1, len: 1 }
    );
    assert!(rank_rows(&[]).unwrap().is_empty());
}

#[test]
fn jina_response_shape_with_top_n_and_documents() {
    let req: RerankRequest = serde_json::from_value(
        json!({"model": "m", "query": "q", "documents": ["a", {"text": "b"}, "c"], "top_n": 2}),
    )
    .unwrap();
    let v = req.validate(RerankFlavor::Jina).unwrap();
    let rows = vec![vec![0.1, 0.9], vec![0.7, 0.3], vec![0.4, 0.6]];
    let resp =
        RerankResponse::from_scores("rerank-1", "m", &v, &rows, 42, RerankFlavor::Jina).unwrap();
    let want = json!({
        "id": "rerank-1", "model": "m",
        "results": [
            {"index": 1, "relevance_score": 0.7, "document": {"text": "b"}},
            {"index": 2, "relevance_score": 0.4, "document": {"text": "c"}}
        ],
        "usage": {"prompt_tokens": 42, "total_tokens": 42}
    });
    assert_eq!(serde_json::to_value(&resp).unwrap(), want);
    let back: RerankResponse = serde_json::from_value(want).unwrap();
    assert_eq!(back, resp);
}

#[test]
fn cohere_response_has_billed_units_and_no_documents_by_default() {
    let docs: Vec<String> = (0..150).map(|i| format!("d{i}")).collect();
    let req: RerankRequest =
        serde_json::from_value(json!({"query": "q", "documents": docs, "top_n": 1})).unwrap();
    let v = req.validate(RerankFlavor::Cohere).unwrap();
    let rows: Vec<Vec<f64>> = (0..150)
        .map(|i| vec![i as f64 / 200.0, 1.0 - i as f64 / 200.0])
        .collect();
    let resp = RerankResponse::from_scores("id", "m", &v, &rows, 7, RerankFlavor::Cohere).unwrap();
    let j = serde_json::to_value(&resp).unwrap();
    assert_eq!(
        j["results"],
        json!([{"index": 149, "relevance_score": 0.745}])
    );
    assert_eq!(
        j["meta"],
        json!({"billed_units": {"search_units": 2, "input_tokens": 7}})
    );
    assert_eq!(j["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
}

#[test]
fn tei_shapes() {
    let req: TeiRerankRequest = serde_json::from_value(json!({
        "query": "q", "texts": ["x", "y"], "raw_scores": true, "return_text": true, "truncate": true
    }))
    .unwrap();
    assert_eq!(req.truncate, Some(true));
    let back: TeiRerankRequest =
        serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
    assert_eq!(back, req);
    let rows = vec![vec![0.25, 0.75], vec![0.75, 0.25]];
    let ranks = tei_ranks(&req, &rows).unwrap();
    assert_eq!(ranks[0].index, 1);
    assert!((ranks[0].score - 3f64.ln()).abs() < 1e-12);
    assert_eq!(ranks[0].text.as_deref(), Some("y"));
    let plain: TeiRerankRequest =
        serde_json::from_value(json!({"query": "q", "texts": ["x", "y"]})).unwrap();
    assert_eq!(
        serde_json::to_value(tei_ranks(&plain, &rows).unwrap()).unwrap(),
        json!([{"index": 1, "score": 0.75}, {"index": 0, "score": 0.25}])
    );
}

#[test]
fn a_stored_rerank_call_is_recognised_and_rendered_in_its_endpoints_shape() {
    let body = json!({"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1,
        "priority": "bulk"});
    let call = RerankCall::parse(RerankEndpoint::V2, &body).unwrap();
    let stored = call.stored(body.clone());
    assert_eq!(stored, json!({"url": "/v2/rerank", "body": body}));
    assert_eq!(RerankCall::from_stored(&stored), Some(call.clone()));
    assert_eq!(call.model(), Some("m"));
    let input = call.input().unwrap();
    assert_eq!(input.documents, vec!["a", "b"]);
    assert!(!input.truncate);

    // A /v1/score body, or anything else, is not a rerank call.
    for other in [
        json!({"query": "q", "items": ["a"], "label_token_ids": [1]}),
        json!({"url": "/v1/score", "body": {}}),
        json!({"url": "/v2/rerank", "body": body, "extra": 1}),
        json!({"url": "/v2/rerank", "body": {"query": "q"}}),
        json!("/v2/rerank"),
    ] {
        assert_eq!(RerankCall::from_stored(&other), None, "{other}");
    }

    let rows = vec![vec![0.2, 0.8], vec![0.9, 0.1]];
    let out = serde_json::to_value(call.render("job", "m", &rows, 7).unwrap()).unwrap();
    assert_eq!(
        out["results"],
        json!([{"index": 1, "relevance_score": 0.9}])
    );
    assert_eq!(out["meta"]["billed_units"]["input_tokens"], 7);
    assert_eq!(out["id"], "job");
    assert!(matches!(
        call.render("job", "m", &rows[..1], 7),
        Err(RerankRenderError::Count {
            rows: 1,
            documents: 2
        })
    ));

    let tei = json!({"query": "q", "texts": ["a", "b"], "truncate": true, "return_text": true});
    let call = RerankCall::parse(RerankEndpoint::Tei, &tei).unwrap();
    assert!(call.input().unwrap().truncate);
    assert_eq!(call.model(), None);
    let out = serde_json::to_value(call.render("job", "m", &rows, 7).unwrap()).unwrap();
    assert_eq!(
        out,
        json!([{"index": 1, "score": 0.9, "text": "b"}, {"index": 0, "score": 0.2, "text": "a"}])
    );
    assert_eq!(RerankEndpoint::parse("/rerank"), Some(RerankEndpoint::Tei));
    assert_eq!(RerankEndpoint::parse("/v3/rerank"), None);
    let e = RerankCall::parse(RerankEndpoint::V1, &json!({"query": "q", "documents": [1]}))
        .unwrap_err();
    assert!(e.message.starts_with("invalid request"), "{e}");
}
