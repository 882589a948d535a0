//! Rendering rules that the goldens (engine/tests/chat_template.rs) do not reach: HF's whitespace
//! settings, `raise_exception`, undefined values, unsupported features, HF-directory sources.

use super::*;

fn tpl(source: &str) -> ChatTemplate {
    ChatTemplate::new(
        source,
        SpecialTokens {
            bos_token: Some("<s>".into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", text)]
}

#[test]
fn trim_and_lstrip_blocks_and_trailing_newline_as_hf() {
    let t = tpl(
        "{{ bos_token }}\n    {% for m in messages %}\n[{{ m.role }}] {{ m.content.strip() }}\n    {% endfor %}\n",
    );
    assert_eq!(
        t.render(&user("  hi  "), false).unwrap(),
        "<s>\n[user] hi\n"
    );
}

#[test]
fn raise_exception_is_a_typed_error() {
    let t = tpl(
        "{% if messages[0].role != 'system' %}{{ raise_exception('System role first: got ' ~ messages[0].role) }}{% endif %}ok",
    );
    match t.render(&user("x"), true) {
        Err(ChatTemplateError::Raised(m)) => assert_eq!(m, "System role first: got user"),
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(t.render(&user("x"), true).unwrap_err().is_request_error());
    assert_eq!(
        t.render(&[ChatMessage::new("system", "s")], true).unwrap(),
        "ok"
    );
}

#[test]
fn printing_an_undefined_variable_is_an_error_but_testing_it_is_not() {
    let t = tpl(
        "{% if tools %}T{% endif %}{% if message is defined %}D{% endif %}{% if not messages[0].tool_calls %}n{% endif %}{{ enable_thinking }}",
    );
    match t.render(&user("x"), false) {
        Err(ChatTemplateError::Undefined(m)) => assert!(m.contains("undefined"), "{m}"),
        other => panic!("expected Undefined, got {other:?}"),
    }
    let t = tpl(
        "{% if tools %}T{% endif %}{% if not messages[0].tool_calls %}n{% endif %}{{ messages[0].content }}",
    );
    assert_eq!(t.render(&user("x"), false).unwrap(), "nx");
}

#[test]
fn unsupported_features_fail_at_load_naming_them() {
    let err = ChatTemplate::new(
        "{{ messages[0].content | frobnicate }}",
        SpecialTokens::default(),
    )
    .unwrap_err();
    match err {
        ChatTemplateError::Unsupported(m) => assert!(
            m.contains("frobnicate") || m.contains("unknown filter"),
            "{m}"
        ),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let err = ChatTemplate::new(
        "{{ messages[0].content.zfill(3) }}",
        SpecialTokens::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ChatTemplateError::Unsupported(_)), "{err:?}");
    assert!(!err.is_request_error());
    let err = ChatTemplate::new("{% for m in messages %}", SpecialTokens::default()).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Syntax(_)), "{err:?}");
}

#[test]
fn python_methods_loop_controls_namespace_and_tojson() {
    let t = tpl(concat!(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}",
        "{% set ns.n = ns.n + 1 %}{{ m.content.split(' ')[0].upper() }}{% if m.content.startswith('b') %}!{% endif %}",
        "{% if loop.index == 3 %}{% break %}{% endif %}{% endfor %}|{{ ns.n }}|{{ messages[0] | tojson }}|{{ strftime_now('%Y') | length }}"
    ));
    let msgs = vec![
        ChatMessage::new("user", "alpha x"),
        ChatMessage::new("skip", "zzz"),
        ChatMessage::new("assistant", "beta <é>"),
        ChatMessage::new("user", "gamma"),
        ChatMessage::new("user", "delta"),
    ];
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "ALPHABETA!|2|{\"role\": \"user\", \"content\": \"alpha x\"}|4"
    );
}

#[test]
fn empty_conversation_and_score_prompt_rule() {
    let t = tpl(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
    );
    assert!(matches!(
        t.render(&[], true),
        Err(ChatTemplateError::EmptyConversation)
    ));
    assert_eq!(
        t.score_prompt(&user("Q?"), " Yes").unwrap(),
        "<user>Q?</user><assistant> Yes"
    );
}

#[test]
fn hf_directory_sources() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_hf_dir(dir.path()).unwrap().is_none());
    let cfg = serde_json::json!({
        "bos_token": {"content": "<|bos|>", "lstrip": false},
        "eos_token": "<|eos|>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
        ]
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&user("hi"), false).unwrap(), "<|bos|>hi<|eos|>");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "J:{{ messages[0].content }}\n",
    )
    .unwrap();
    let t = ChatTemplate::for_model(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&user("hi"), false).unwrap(), "J:hi");
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "x", "template": "y"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        ChatTemplate::from_hf_dir(dir.path()),
        Err(ChatTemplateError::Read { .. })
    ));
}
