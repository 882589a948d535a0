//! Hostile headers, query strings and credentials (issue 14, defects 4, 7 and 8), on the real
//! RabbitMQ, Redis and Postgres: each answer is a JSON error with the documented shape, never a
//! dropped connection or plain text.

mod common;

use common::{Backing, Harness, score_body};
use reqwest::StatusCode;
use serde_json::Value;

fn assert_error(body: &Value, code: u16, kind: &str) {
    assert_eq!(body["object"], "error", "{body}");
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["param"], Value::Null, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Defect 4: `X-Request-Timeout: 1e20` panicked in `Duration::from_secs_f64` and dropped the
/// connection. Large values are capped at the server's maximum; garbage is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_header_never_drops_the_connection() {
    let mut h = Harness::start(Backing::Real, |_| {}).await;
    h.start_worker();
    for huge in ["1e20", "1.7976931348623157e308", "18446744073709551616"] {
        let (status, _, body) = h
            .post_with("/v1/score", &score_body(), &[("x-request-timeout", huge)])
            .await;
        assert_eq!(status, StatusCode::OK, "{huge}: {body}");
        assert_eq!(body["scores"].as_array().map(Vec::len), Some(3), "{body}");
    }
    for bad in ["abc", "-1", "0", "inf", "NaN", "1e400"] {
        let (status, _, body) = h
            .post_with("/v1/score", &score_body(), &[("x-request-timeout", bad)])
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_error(&body, 400, "BadRequestError");
    }
    h.finish().await;
}

/// Defect 7: extractor rejections (query strings, unknown routes, wrong methods, forms) answered
/// axum's plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_a_json_error() {
    let h = Harness::start(Backing::Real, |_| {}).await;
    for query in [
        "limit=-1",
        "limit=abc",
        "after=not-a-uuid",
        "limit=1&limit=2",
    ] {
        let (status, headers, body) = h.get(&format!("/v1/batches?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(
            headers[reqwest::header::CONTENT_TYPE],
            "application/json",
            "{query}"
        );
        assert_error(&body, 400, "BadRequestError");
    }
    let (status, _, body) = h.get("/v1/no-such-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, 404, "NotFoundError");

    let (status, headers, body) = h.get("/v1/score").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_error(&body, 405, "MethodNotAllowedError");
    assert!(headers.contains_key(reqwest::header::ALLOW), "{headers:?}");

    // A multipart upload with no boundary, and a window that is not a string of hours.
    let resp = h
        .http
        .post(format!("{}/v1/batches", h.base))
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json error");
    assert_error(&body, 400, "BadRequestError");
    h.finish().await;
}

/// Defect 8: `bearer` in lower case was refused; the scheme is case-insensitive. Static keys are
/// compared in constant time (a unit test in `api/src/auth.rs` covers the comparison).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive() {
    let h = Harness::start(Backing::Real, |c| {
        c.api_keys.insert("key-a".into(), "tenant-a".into());
    })
    .await;
    let list = |auth: &'static str| {
        h.http
            .get(format!("{}/v1/batches", h.base))
            .header("authorization", auth)
            .send()
    };
    for auth in [
        "Bearer key-a",
        "bearer key-a",
        "BEARER key-a",
        "bEaReR   key-a",
    ] {
        let resp = list(auth).await.expect("request");
        assert_eq!(resp.status(), StatusCode::OK, "{auth}");
    }
    for auth in [
        "Bearer key-b",
        "bearer key-",
        "Basic key-a",
        "key-a",
        "Bearerkey-a",
    ] {
        let resp = list(auth).await.expect("request");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth}");
        let body: Value = resp.json().await.expect("json error");
        assert_error(&body, 401, "AuthenticationError");
    }
    h.finish().await;
}
