//! Several devices of one plugin (`Engine::load_devices`): the CPU plugin made to expose two
//! devices (`cpu_device_count`), one client, one engine per device. Each scores as an engine
//! alone on its own client does (1e-6), with its own prefix cache, and every program is
//! compiled once for both devices, also when both ask for it at the same time. A device the
//! plugin lacks is refused by name and count before any weight is read.
//!
//! One test function on purpose: it reads the process-wide executable counters.

use std::path::{Path, PathBuf};

use scorer_engine::pjrt::{ClientOptions, DeviceSelection, ExecutableCounts, executable_counts};
use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_protocol::ScoreRequest;
use serde_json::json;

/// A tiny random Llama with a tokenizer (HF directory): compiles in moments.
fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/goldens/tiny-llama-bf16-sharded")
}

fn config(devices: i64) -> EngineConfig {
    let mut cfg = EngineConfig::new(model_dir(), "tiny-llama".to_string());
    cfg.client_options = ClientOptions::cpu_devices(devices);
    // In memory only: what is compiled is what the counters see.
    cfg.compile_cache = None;
    cfg
}

/// Token-id requests: a 40-token shared query with three items (coalesced, its prefix cached),
/// and a short one with a softmax over labels.
fn requests(tokens: usize) -> Vec<ScoreRequest> {
    let query: Vec<u32> = (0..tokens as u32).map(|i| 3 + (i * 7) % 300).collect();
    [
        json!({"query": query, "items": [[11, 12], [13], [14, 15, 16]],
               "label_token_ids": [5, 17, 42], "apply_softmax": false}),
        json!({"query": [9, 8, 7], "items": [[1], [2, 3]],
               "label_token_ids": [4, 6], "apply_softmax": true}),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).expect("request"))
    .collect()
}

fn score_all(engine: &Engine, reqs: &[ScoreRequest]) -> Vec<Vec<Vec<f64>>> {
    reqs.iter()
        .map(|r| engine.score(r).expect("scores").scores)
        .collect()
}

fn assert_close(got: &[Vec<Vec<f64>>], want: &[Vec<Vec<f64>>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        assert_eq!(g.len(), w.len(), "{what}");
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= 1e-6, "{what}: {got:?} vs {want:?}");
        }
    }
}

fn since(before: ExecutableCounts) -> ExecutableCounts {
    let now = executable_counts();
    ExecutableCounts {
        compiled: now.compiled - before.compiled,
        deserialized: now.deserialized - before.deserialized,
        shared: now.shared - before.shared,
    }
}

#[test]
fn two_devices_share_one_client_and_score_like_one() {
    // A device past the count fails before the weights, naming the count.
    for (selection, missing) in [(DeviceSelection::one(5), 5), ("0,2".parse().unwrap(), 2)] {
        let err = Engine::load_devices(config(2), &selection)
            .map(|_| ())
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!(
                "device {missing} does not exist (the plugin has 2 addressable devices: 0 to 1)"
            )),
            "{msg}"
        );
    }

    let engines = Engine::load_devices(config(2), &DeviceSelection::All).expect("two engines");
    assert_eq!(
        engines.iter().map(Engine::device).collect::<Vec<_>>(),
        [0, 1]
    );
    // The reference: one device on a client of its own.
    let single = Engine::load(config(2)).expect("one engine");
    assert_eq!(single.device(), 0);

    let reqs = requests(40);
    let start = executable_counts();
    let on0 = score_all(&engines[0], &reqs);
    let first = since(start);
    assert!(first.compiled > 0, "device 0 compiled its programs");

    let start = executable_counts();
    let on1 = score_all(&engines[1], &reqs);
    let second = since(start);
    assert_eq!(second.compiled, 0, "device 1 compiled nothing");
    assert_eq!(
        second.shared, first.compiled,
        "device 1 ran device 0's executables"
    );

    let start = executable_counts();
    let want = score_all(&single, &reqs);
    assert_eq!(
        since(start).compiled,
        first.compiled,
        "another client compiles for itself"
    );
    assert_close(&on0, &want, "device 0 of two vs one device");
    assert_close(&on1, &want, "device 1 of two vs one device");

    // Each device keeps its own prefix cache: the shared query was computed on each.
    for engine in &engines {
        let stats = engine.stats().expect("stats");
        assert_eq!(stats.prefix_cache_entries, 1, "device {}", engine.device());
        assert_eq!(stats.prefix_hit_tokens, 0, "device {}", engine.device());
    }

    // New program shapes asked for on both devices at once: still one compilation each
    // (prompts stay within the checkpoint's 128-token context, the prompt limit).
    let reqs = requests(100);
    let start = executable_counts();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| score_all(&engines[0], &reqs));
        let b = s.spawn(|| score_all(&engines[1], &reqs));
        (a.join().expect("device 0"), b.join().expect("device 1"))
    });
    let both = since(start);
    let start = executable_counts();
    let want = score_all(&single, &reqs);
    let alone = since(start);
    assert!(alone.compiled > 0, "the longer query needs new programs");
    assert_eq!(
        both.compiled, alone.compiled,
        "two devices at once compile each program once"
    );
    assert_close(&a, &want, "device 0, concurrent");
    assert_close(&b, &want, "device 1, concurrent");
}
