//! `EngineConfig::client_options` reach `PJRT_Client_Create` when an engine starts: the CPU
//! plugin's `cpu_device_count` decides which `--device` values exist.

use scorer_engine::home;
use scorer_engine::pjrt::ClientOptions;
use scorer_engine::runtime::{Engine, EngineConfig};

const ALIAS: &str = "smollm2-135m-instruct-q4_1";

fn config(devices: i64, device: usize) -> EngineConfig {
    let mut cfg = EngineConfig::new(home::model_file(ALIAS), ALIAS.to_string());
    cfg.compile_cache = Some(home::executable_cache());
    cfg.client_options = ClientOptions::cpu_devices(devices);
    cfg.device = device;
    cfg
}

#[test]
fn client_options_decide_the_devices_an_engine_sees() {
    assert_eq!(
        EngineConfig::new("m".into(), "m".into()).client_options,
        ClientOptions::default(),
        "no options unless asked"
    );
    // One device: device 1 does not exist.
    let err = Engine::load(config(1, 1)).map(|_| ()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("device 1 does not exist (the plugin has 1 addressable device: 0)"),
        "{msg}"
    );
    // Five devices: the last one holds the weights and scores.
    let engine = Engine::load(config(5, 4)).expect("device 4 of 5");
    let req = serde_json::from_value(serde_json::json!({
        "query": "Is Tokyo a city?", "items": [" Yes"], "label_token_ids": [1, 2]}))
    .expect("request");
    let resp = engine.score(&req).expect("score");
    assert_eq!(resp.scores.len(), 1);
}
