//! `cargo +nightly fuzz run score_request`: arbitrary bytes into `scorer_api::fuzzing::score_request`, which must
//! never panic. Seeds: `fuzz/corpus/score_request/` (also replayed on stable by api/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = scorer_api::fuzzing::score_request(data);
});
