//! `cargo +nightly fuzz run batch_line`: arbitrary bytes into `scorer_api::fuzzing::batch_line`, which must
//! never panic. Seeds: `fuzz/corpus/batch_line/` (also replayed on stable by api/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = scorer_api::fuzzing::batch_line(data);
});
