//! Entry points of the fuzz targets: one per parser that faces untrusted bytes. Each takes
//! arbitrary bytes the way the server meets them and must never panic, whatever they are. The
//! cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) call these, and so do the stable corpus
//! replays in `api/tests/fuzz_corpus.rs`, which `cargo test` runs (docs/TESTING.md).

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::{Request, header};
use scorer_protocol::ScoreRequest;

use crate::routes::jobs::JobRequest;

/// The boundary [`multipart_upload`] declares; inputs use it to reach the part parser.
pub const BOUNDARY: &str = "scorerfuzz";

/// A `/v1/score` or `/v1/score/jobs` body: JSON, then the request types, then the structural
/// validation. Returns whether it was a valid request (a corpus replay can check its seeds).
pub fn score_request(bytes: &[u8]) -> bool {
    let _ = crate::submit::parse_json::<JobRequest>(bytes);
    match crate::submit::parse_json::<ScoreRequest>(bytes) {
        Ok((req, _)) => req.validate().is_ok(),
        Err(_) => false,
    }
}

/// One line of a JSONL batch upload, up to the structural checks. Returns whether it parsed.
pub fn batch_line(bytes: &[u8]) -> bool {
    match crate::routes::batches::parse_line(bytes) {
        Ok((_, _, crate::routes::batches::LineRequest::Score(req))) => {
            let _ = req.validate();
            true
        }
        Ok((_, _, crate::routes::batches::LineRequest::Rerank(call))) => {
            let _ = call.input();
            true
        }
        Err(_) => false,
    }
}

/// A `multipart/form-data` upload body (boundary [`BOUNDARY`]) read part by part as the upload
/// route reads it; each part's name and every chunk. Returns the parts read.
pub fn multipart_upload(bytes: &[u8]) -> usize {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return 0;
    };
    runtime.block_on(async {
        let Ok(request) = Request::builder()
            .method("POST")
            .uri("/v1/batches")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(bytes.to_vec()))
        else {
            return 0;
        };
        let Ok(mut form) = Multipart::from_request(request, &()).await else {
            return 0;
        };
        let mut parts = 0;
        while let Ok(Some(mut field)) = form.next_field().await {
            parts += 1;
            let _ = (field.name(), field.file_name(), field.content_type());
            while let Ok(Some(_chunk)) = field.chunk().await {}
        }
        parts
    })
}
