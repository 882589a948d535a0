//! The on-disk weight cache (`Model::load_path`): a first load writes the program's parameters
//! to one file, a second maps it (the file is not rewritten) and scores exactly as a model
//! uploaded from host tensors does; a corrupt or torn file is detected and rebuilt; the key
//! follows the dtype and the model file's identity. On tiny checkpoints (a Hugging Face
//! directory with an untied head, a tied SentencePiece GGUF) and the real CPU plugin.

use std::path::{Path, PathBuf};

use scorer_engine::model::{DType, HeadVariant, LoadOptions, Model, PackedBatch};
use scorer_engine::weights;
use scorer_testkit::tiny::client;

fn goldens(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/goldens")
        .join(name)
}

/// Two prompts in one pass, both scored on four labels.
fn batch(vocab: u32) -> PackedBatch {
    let tokens: Vec<u32> = (0..20u32).map(|i| (i * 37 + 5) % vocab).collect();
    PackedBatch {
        positions: (0..12).chain(0..8).collect(),
        segment: [vec![0; 12], vec![1; 8]].concat(),
        prefix_segment: vec![-1; 20],
        score_index: vec![11, 19],
        label_ids: vec![vec![1, 2, 3, 4], vec![5 % vocab, 6, 7, 8]],
        tokens,
    }
}

fn scores(model: &Model) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size as u32;
    model
        .run(&batch(vocab), HeadVariant::FullLogprobs)
        .expect("forward pass")
}

fn opts(dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        ..Default::default()
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn load(path: &Path, dir: &Path, dtype: DType) -> Model {
    Model::load_path(client(), path, opts(dtype), Some(dir)).expect("load through the cache")
}

/// Builds, maps, then survives a flipped byte and a truncation, scoring identically each time.
fn round_trip(model_path: &Path) {
    let host = weights::load(model_path).expect("weights");
    let want = scores(&Model::load_with(client(), &host, opts(DType::F32)).expect("upload"));
    let dir = tempfile::tempdir().expect("tempdir");

    let built = load(model_path, dir.path(), DType::F32);
    assert_eq!(scores(&built), want, "built cache");
    let files = cache_files(dir.path());
    assert_eq!(
        files.len(),
        1,
        "one cache file, no temporary left: {files:?}"
    );
    let file = files[0].clone();
    let written = std::fs::metadata(&file)
        .expect("cache file")
        .modified()
        .ok();

    let mapped = load(model_path, dir.path(), DType::F32);
    assert_eq!(scores(&mapped), want, "mapped cache");
    assert_eq!(
        std::fs::metadata(&file)
            .expect("cache file")
            .modified()
            .ok(),
        written,
        "a valid cache file is mapped, not rewritten"
    );
    drop((built, mapped));

    // A flipped byte in the first tensor's data: its checksum fails, the file is rebuilt.
    let good = std::fs::read(&file).expect("read cache");
    let mut bad = good.clone();
    bad[5] ^= 0x40;
    std::fs::write(&file, &bad).expect("corrupt");
    let rebuilt = load(model_path, dir.path(), DType::F32);
    assert_eq!(scores(&rebuilt), want, "after corruption");
    assert_eq!(std::fs::read(&file).expect("read cache"), good, "rebuilt");
    drop(rebuilt);

    // A torn file (cut short): no trailer, rebuilt.
    std::fs::write(&file, &good[..good.len() / 2]).expect("truncate");
    let rebuilt = load(model_path, dir.path(), DType::F32);
    assert_eq!(scores(&rebuilt), want, "after truncation");
    assert_eq!(std::fs::read(&file).expect("read cache"), good, "rebuilt");
    assert_eq!(cache_files(dir.path()).len(), 1);
}

#[test]
fn hf_directory_with_untied_head_round_trips() {
    round_trip(&goldens("tiny-qwen2-f32"));
}

#[test]
fn f16_directory_with_tied_head_round_trips() {
    round_trip(&goldens("tiny-qwen2-f16-tied"));
}

/// Each dtype has its own entry (bf16 stores bf16 matrices); a model file with another mtime
/// is another entry, so an edited model never meets stale weights.
#[test]
fn key_follows_dtype_and_file_identity() {
    let src = goldens("tiny-qwen2-f16-tied");
    let work = tempfile::tempdir().expect("tempdir");
    let model_path = work.path().join("model");
    std::fs::create_dir(&model_path).expect("model dir");
    for f in std::fs::read_dir(&src).expect("list model") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, model_path.join(f.file_name().expect("name"))).expect("copy model");
    }
    let dir = work.path().join("cache");

    let f32_model = load(&model_path, &dir, DType::F32);
    let bf16_model = load(&model_path, &dir, DType::BF16Storage);
    assert_eq!(cache_files(&dir).len(), 2, "one entry per dtype");
    let host = weights::load(&model_path).expect("weights");
    let want = scores(&Model::load_with(client(), &host, opts(DType::BF16Storage)).expect("up"));
    assert_eq!(scores(&bf16_model), want, "bf16 weights from the cache");
    assert!(bf16_model.stats().weight_bytes < f32_model.stats().weight_bytes);

    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(model_path.join("model.safetensors"))
        .and_then(|f| f.set_modified(later))
        .expect("touch model");
    let _touched = load(&model_path, &dir, DType::F32);
    assert_eq!(
        cache_files(&dir).len(),
        3,
        "a changed model file is a new entry"
    );
}
