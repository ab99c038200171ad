//! Chat-template parity with transformers' `apply_chat_template` (fixtures from
//! scripts/fixtures/gen_template_fixtures.py), and the incremental detokenizer over the same tiny GLM-V tokenizer.
use std::path::PathBuf;

use glmv_runtime::text::template::{to_template_messages, ChatTemplate, RenderOptions};
use glmv_runtime::text::{Detokenizer, SpecialTokens, Tokenizer};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

/// The fixture, or `None` (with a message) when it has not been generated.
fn load_fixture() -> Option<Value> {
    let path = fixture_dir().join("glm_v_chat.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "SKIPPED: {} is absent; generate it with scripts/fixtures/.venv/bin/python scripts/fixtures/gen_template_fixtures.py",
            path.display()
        );
        return None;
    };
    Some(serde_json::from_str(&text).expect("fixture is valid JSON"))
}

fn tokenizer() -> Option<Tokenizer> {
    let dir = fixture_dir();
    if !dir.join("tokenizer.json").exists() {
        eprintln!("SKIPPED: {} has no tokenizer.json; run scripts/fixtures/gen_template_fixtures.py", dir.display());
        return None;
    }
    Some(Tokenizer::from_dir(&dir).expect("fixture tokenizer loads"))
}

#[test]
fn glm_v_template_matches_transformers() {
    let Some(fixture) = load_fixture() else { return };
    let template = ChatTemplate::from_dir(&fixture_dir()).expect("template compiles");
    let tok = tokenizer().expect("the fixture ships its tokenizer");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30, "expected at least 30 conversations, got {}", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let messages = to_template_messages(case["messages"].as_array().unwrap()).expect(name);
        let opts = RenderOptions {
            tools: case["tools"].as_array().cloned(),
            documents: case["documents"].as_array().cloned(),
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            continue_final_message: false,
            kwargs: case["chat_template_kwargs"].as_object().cloned().unwrap_or_default(),
        };
        let text = match template.render(&messages, &opts) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: render failed: {e}"));
                continue;
            }
        };
        let want_text = case["text"].as_str().unwrap();
        if text != want_text {
            let at = text.chars().zip(want_text.chars()).take_while(|(a, b)| a == b).count();
            failures.push(format!(
                "{name}: text differs at char {at}\n  got:  {:?}\n  want: {:?}",
                text.chars().skip(at.saturating_sub(20)).take(60).collect::<String>(),
                want_text.chars().skip(at.saturating_sub(20)).take(60).collect::<String>()
            ));
            continue;
        }
        let ids = tok.encode_prompt(&text).unwrap();
        let want_ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        if ids != want_ids {
            failures.push(format!("{name}: ids differ\n  got:  {ids:?}\n  want: {want_ids:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The texts and ids the detokenizer is checked on: every fixture prompt plus multi-byte text.
fn detok_samples(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let mut samples: Vec<Vec<u32>> = [
        "北京欢迎你！😀👍🏽 emoji and 中文 mixed",
        "<think>思考中…</think>答案是 <|begin_of_box|>[[1,2,3,4]]<|end_of_box|><|user|>",
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>東京</arg_value>\n</tool_call><|observation|>",
        "plain ascii text with  double  spaces\n\nand newlines",
    ]
    .iter()
    .map(|t| tok.encode_prompt(t).unwrap())
    .collect();
    if let Some(fixture) = load_fixture() {
        for case in fixture["cases"].as_array().unwrap() {
            samples.push(case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect());
        }
    }
    samples
}

#[test]
fn detokenizer_matches_full_decode() {
    let Some(tok) = tokenizer() else { return };
    type Policy = fn(&Tokenizer) -> SpecialTokens;
    let policies: [(&str, Policy); 3] = [
        ("skip", |_| SpecialTokens::Skip),
        ("keep", |_| SpecialTokens::Keep),
        ("glm tags", SpecialTokens::glm_output_tags),
    ];
    for ids in detok_samples(&tok) {
        for (label, policy) in &policies {
            let mut detok = Detokenizer::new(&tok, policy(&tok));
            let mut text = String::new();
            for &id in &ids {
                let piece = detok.push(&tok, id).unwrap();
                assert!(!piece.contains('\u{FFFD}'), "{label}: broken UTF-8 emitted: {piece:?}");
                text += &piece;
            }
            text += &detok.finish(&tok).unwrap();
            let want = match *label {
                "skip" => tok.decode(&ids, true).unwrap(),
                "keep" => tok.decode(&ids, false).unwrap(),
                _ => {
                    let keep = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>"]
                        .into_iter()
                        .chain(["<arg_value>", "</arg_value>", "<|begin_of_box|>", "<|end_of_box|>"])
                        .filter_map(|t| tok.token_to_id(t))
                        .collect::<Vec<_>>();
                    let special = tok.special_token_ids();
                    let visible: Vec<u32> =
                        ids.iter().copied().filter(|id| !special.contains(id) || keep.contains(id)).collect();
                    tok.decode(&visible, false).unwrap()
                }
            };
            assert_eq!(text, want, "{label}: incremental decode differs from full decode");
        }
    }
}

#[test]
fn detokenizer_holds_incomplete_characters() {
    let Some(tok) = tokenizer() else { return };
    // The tiny vocabulary splits every CJK character and emoji into several byte tokens.
    let ids = tok.encode_prompt("😀").unwrap();
    assert!(ids.len() > 1, "expected a multi-token emoji, got {ids:?}");
    let mut detok = Detokenizer::new(&tok, SpecialTokens::Skip);
    let pieces: Vec<String> = ids.iter().map(|&id| detok.push(&tok, id).unwrap()).collect();
    assert!(pieces[..pieces.len() - 1].iter().all(String::is_empty), "{pieces:?}");
    assert_eq!(pieces.last().unwrap(), "😀");
    // A sequence cut inside a character flushes as U+FFFD, as a full decode does.
    let mut detok = Detokenizer::new(&tok, SpecialTokens::Skip);
    let mut text: String = ids[..ids.len() - 1].iter().map(|&id| detok.push(&tok, id).unwrap()).collect();
    text += &detok.finish(&tok).unwrap();
    assert_eq!(text, tok.decode(&ids[..ids.len() - 1], true).unwrap());
}
