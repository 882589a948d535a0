//! Device→host traffic of a scoring call. Its own test binary (own process), so no other test's
//! transfers reach the global counter while it measures.

use scorer_engine::runtime::{Engine, EngineConfig};
use scorer_engine::{home, pjrt};
use scorer_protocol::ScoreRequest;

fn engine(alias: &str) -> Engine {
    let mut cfg = EngineConfig::new(home::model_file(alias), alias.to_string());
    cfg.compile_cache = Some(home::executable_cache());
    Engine::load(cfg).expect("engine loads")
}

/// Device→host traffic of a scoring call is the [N, L] result, not a vocabulary-sized row.
#[test]
fn device_to_host_is_n_by_l_floats() {
    let alias = "smollm2-135m-instruct-q4_1";
    let engine = engine(alias);
    for apply_softmax in [true, false] {
        let req: ScoreRequest = serde_json::from_value(serde_json::json!({
            "query": "Is this a fruit?", "items": [" apple", " car", " pear"],
            "label_token_ids": [10539, 5230], "apply_softmax": apply_softmax
        }))
        .expect("request");
        engine.score(&req).expect("warm-up compiles the program");
        let before = pjrt::d2h_bytes_total();
        engine.score(&req).expect("score");
        let moved = pjrt::d2h_bytes_total() - before;
        // 3 items x 2 labels of f32, padded to the scored-row and label buckets at most (4 x 2).
        assert!(
            moved >= 3 * 2 * 4,
            "at least the result moved ({moved} bytes)"
        );
        assert!(
            moved <= 4 * 2 * 4,
            "only the [N, L] result leaves the device, moved {moved} bytes"
        );
    }
}
