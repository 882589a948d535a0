//! Plan 1.4: scripts beyond ASCII, in its own file to keep score_api.rs under 700 lines; same
//! binary, same engines.

use super::*;

/// Plan 1.4: CJK, accented Latin, emoji and other scripts tokenize as Hugging Face does (goldens,
/// both architectures), decode back to the text, and score like any other prompt.
#[test]
fn test_score_unicode_multilingual() {
    let _serial = serial();
    let names = ["unicode_cjk", "unicode_accents", "emoji"];
    for (alias, engine) in [(QWEN, &*QWEN_F32), (SMOL, &*SMOL_F32)] {
        let gold = golden(alias);
        let cases: Vec<Value> = names.iter().map(|n| golden_case(&gold, n)).collect();
        let bodies: Vec<Value> = cases
            .iter()
            .map(|c| serde_json::to_value(case_request(c)).expect("json"))
            .collect();
        for ((case, body), resp) in cases.iter().zip(&bodies).zip(score_many(engine, &bodies)) {
            let name = format!("{alias}/{}", case["name"].as_str().expect("name"));
            assert_close_to_reference(&resp.scores, &matrix(&case["scores"]), 1e-3, &name);
            let job = engine.prepare(&req(body.clone())).expect("prepare");
            let query = case["query"].as_str().expect("text query");
            for (prompt, item) in job
                .prompts
                .iter()
                .zip(case["items"].as_array().expect("items"))
            {
                let decoded = engine.tokenizer().decode(prompt).expect("decode");
                assert_eq!(
                    decoded,
                    format!("{query}{}", item.as_str().expect("text")),
                    "{name}"
                );
            }
        }
    }
    let engine = &*QWEN_F32;
    let texts = [
        "مرحبا بالعالم",
        "Привет, мир",
        "नमस्ते दुनिया",
        "안녕하세요",
        "Ελληνικά",
    ];
    let resp = score(
        engine,
        json!({"query": "Is this a greeting? ", "items": texts, "label_token_ids": yes_no(),
               "apply_softmax": true}),
    );
    assert_well_formed(&resp.scores, texts.len(), 2, true);
    for t in texts {
        let ids = engine.tokenizer().encode(t).expect("encode");
        assert_eq!(engine.tokenizer().decode(&ids).expect("decode"), t);
    }
}
