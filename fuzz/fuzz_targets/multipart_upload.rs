//! `cargo +nightly fuzz run multipart_upload`: arbitrary bytes into `scorer_api::fuzzing::multipart_upload`, which must
//! never panic. Seeds: `fuzz/corpus/multipart_upload/` (also replayed on stable by api/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = scorer_api::fuzzing::multipart_upload(data);
});
