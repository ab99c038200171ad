//! A checkpoint whose greedy output is known: the moe_bf16 fixture's vision tower and tokenizer with a one-layer
//! text decoder built by hand, so that the real engine and server produce GLM's reasoning and tool-call tags.
//!
//! How it works (hidden size 64):
//! - every token that occurs in the script gets a one-hot embedding on its own dimension ("code"); dimensions
//!   62 (F) and 63 (G) are flags;
//! - attention head 0 looks for `</think>` anywhere in the context and head 2 for `<|observation|>`: a constant
//!   query (the q bias) on an unrotated dimension meets a key only those tokens have, so softmax puts all weight on
//!   them when present and spreads over zero values otherwise; the values and o_proj write 1 into F or G;
//! - the MLP's down projection is zero, so the final hidden state is the current token's code plus the flags;
//! - lm_head scores each scripted successor b of token a as K - M * (flags b needs) + M * (+-flag), which is K
//!   exactly when the flags match b's state and at most K - M otherwise, so greedy decoding walks the script.
//!
//! The script: with no `</think>` in the context (thinking on), `\n` -> `<think>Hello</think>`; once `</think>` is
//! there (generated, or thinking off) -> `<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris
//! </arg_value></tool_call>` and `<|observation|>` (an EOS); once a tool result (`<|observation|>`) is in the
//! prompt -> `Windy` and `<|user|>` (an EOS).
use std::{collections::HashMap, path::Path};

use glmv_runtime::{
    text::Tokenizer,
    weights::{
        writer::{write_safetensors, RawTensor},
        Dtype, WeightStore,
    },
};

pub const REASONING: &str = "Hello";
pub const TOOL: &str = "get_weather";
pub const ARG_KEY: &str = "city";
pub const ARG_VALUE: &str = "Paris";
pub const ANSWER: &str = "Windy";

const HIDDEN: usize = 64;
const FLAG_F: usize = 62;
const FLAG_G: usize = 63;
const K: f32 = 3.0;
const M: f32 = 1.0;

/// Which flags a scripted token needs: (F, G); None means "either".
#[derive(Clone, Copy)]
struct State {
    f: Option<bool>,
    g: Option<bool>,
}

const THINKING: State = State { f: Some(false), g: Some(false) };
const CALLING: State = State { f: Some(true), g: Some(false) };
const ANSWERING: State = State { f: None, g: Some(true) };

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode_prompt(text).unwrap()
}

/// Writes the crafted checkpoint into `dir` (from the moe_bf16 fixture in `fixture`).
pub fn write_crafted_checkpoint(fixture: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
    config["text_config"]["num_hidden_layers"] = 1.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let text = &config["text_config"];
    assert_eq!(text["hidden_size"], HIDDEN);
    let (heads, kv_heads, head_dim) = (4usize, 2usize, 32usize);
    assert_eq!((text["num_attention_heads"].as_u64(), text["num_key_value_heads"].as_u64()), (Some(4), Some(2)));
    let vocab = text["vocab_size"].as_u64().unwrap() as usize;

    let tok = Tokenizer::from_dir(fixture).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    let newline = ids(&tok, "\n")[0];
    // (predecessor, successor, state) transitions.
    let mut script: Vec<(u32, u32, State)> = Vec::new();
    let mut chain = |start: &[u32], tokens: Vec<u32>, state: State| {
        for &s in start {
            script.push((s, tokens[0], state));
        }
        for w in tokens.windows(2) {
            script.push((w[0], w[1], state));
        }
    };
    let think: Vec<u32> = [vec![id("<think>")], ids(&tok, REASONING), vec![id("</think>")]].concat();
    chain(&[newline], think, THINKING);
    let call: Vec<u32> = [
        vec![id("<tool_call>")],
        ids(&tok, TOOL),
        vec![id("<arg_key>")],
        ids(&tok, ARG_KEY),
        vec![id("</arg_key>"), id("<arg_value>")],
        ids(&tok, ARG_VALUE),
        vec![id("</arg_value>"), id("</tool_call>"), id("<|observation|>")],
    ]
    .concat();
    chain(&[newline, id("</think>")], call, CALLING);
    chain(&[newline], [ids(&tok, ANSWER), vec![id("<|user|>")]].concat(), ANSWERING);

    let mut codes: HashMap<u32, usize> = HashMap::new();
    let code = |t: u32, codes: &mut HashMap<u32, usize>| {
        let next = codes.len();
        *codes.entry(t).or_insert(next)
    };
    for (a, b, _) in &script {
        code(*a, &mut codes);
        code(*b, &mut codes);
    }
    let think_end = code(id("</think>"), &mut codes);
    let observation = code(id("<|observation|>"), &mut codes);
    assert!(codes.len() <= FLAG_F, "{} coded tokens do not fit", codes.len());

    let mut embed = vec![0f32; vocab * HIDDEN];
    for (&t, &c) in &codes {
        embed[t as usize * HIDDEN + c] = 1.0;
    }
    let mut lm_head = vec![0f32; vocab * HIDDEN];
    let mut state_of: HashMap<u32, (Option<bool>, Option<bool>)> = HashMap::new();
    for (a, b, s) in &script {
        let prev = state_of.insert(*b, (s.f, s.g));
        assert!(prev.is_none_or(|p| p == (s.f, s.g)), "token {b} is scripted in two states");
        let row = &mut lm_head[*b as usize * HIDDEN..][..HIDDEN];
        let on = [s.f, s.g].iter().filter(|x| **x == Some(true)).count() as f32;
        row[codes[a]] = K - M * on;
        let sign = |x: Option<bool>| match x {
            Some(true) => M,
            Some(false) => -M,
            None => 0.0,
        };
        row[FLAG_F] = sign(s.f);
        row[FLAG_G] = sign(s.g);
    }

    let (q_rows, kv_rows) = (heads * head_dim, kv_heads * head_dim);
    // The last dimension of each head is outside the rotary half (partial_rotary_factor 0.5).
    let probe = head_dim - 1;
    let (s_q, s_k) = (8.0f32, 4.0f32);
    let mut q_bias = vec![0f32; q_rows];
    q_bias[probe] = s_q;
    q_bias[2 * head_dim + probe] = s_q;
    let mut k_w = vec![0f32; kv_rows * HIDDEN];
    k_w[probe * HIDDEN + think_end] = s_k;
    k_w[(head_dim + probe) * HIDDEN + observation] = s_k;
    // The layer norm scales a one-hot embedding to sqrt(64) = 8; 1/8 makes the value exactly 1.
    let mut v_w = vec![0f32; kv_rows * HIDDEN];
    v_w[think_end] = 0.125;
    v_w[head_dim * HIDDEN + observation] = 0.125;
    let mut o_w = vec![0f32; HIDDEN * q_rows];
    o_w[FLAG_F * q_rows] = 1.0;
    o_w[FLAG_G * q_rows + 2 * head_dim] = 1.0;

    let inter = text["intermediate_size"].as_u64().unwrap() as usize;
    let p = "model.language_model.layers.0";
    let zeros = |n: usize| vec![0f32; n];
    let ones = |n: usize| vec![1f32; n];
    let mut tensors = vec![
        RawTensor::bf16("model.language_model.embed_tokens.weight", &[vocab, HIDDEN], &embed),
        RawTensor::bf16("lm_head.weight", &[vocab, HIDDEN], &lm_head),
        RawTensor::bf16("model.language_model.norm.weight", &[HIDDEN], &ones(HIDDEN)),
        RawTensor::bf16(format!("{p}.input_layernorm.weight"), &[HIDDEN], &ones(HIDDEN)),
        RawTensor::bf16(format!("{p}.post_attention_layernorm.weight"), &[HIDDEN], &ones(HIDDEN)),
        RawTensor::bf16(format!("{p}.self_attn.q_proj.weight"), &[q_rows, HIDDEN], &zeros(q_rows * HIDDEN)),
        RawTensor::bf16(format!("{p}.self_attn.q_proj.bias"), &[q_rows], &q_bias),
        RawTensor::bf16(format!("{p}.self_attn.k_proj.weight"), &[kv_rows, HIDDEN], &k_w),
        RawTensor::bf16(format!("{p}.self_attn.k_proj.bias"), &[kv_rows], &zeros(kv_rows)),
        RawTensor::bf16(format!("{p}.self_attn.v_proj.weight"), &[kv_rows, HIDDEN], &v_w),
        RawTensor::bf16(format!("{p}.self_attn.v_proj.bias"), &[kv_rows], &zeros(kv_rows)),
        RawTensor::bf16(format!("{p}.self_attn.o_proj.weight"), &[HIDDEN, q_rows], &o_w),
        RawTensor::bf16(format!("{p}.mlp.gate_proj.weight"), &[inter, HIDDEN], &zeros(inter * HIDDEN)),
        RawTensor::bf16(format!("{p}.mlp.up_proj.weight"), &[inter, HIDDEN], &zeros(inter * HIDDEN)),
        RawTensor::bf16(format!("{p}.mlp.down_proj.weight"), &[HIDDEN, inter], &zeros(inter * HIDDEN)),
    ];
    let store = WeightStore::open(fixture, &mut |_| {}).unwrap();
    let mut visual: Vec<&str> = store.names().filter(|n| n.starts_with("model.visual.")).collect();
    visual.sort_unstable();
    for name in visual {
        let t = store.get(name).unwrap();
        let dtype = match t.dtype {
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        tensors.push(RawTensor { name: name.to_string(), dtype, shape: t.shape.clone(), bytes: t.bytes.to_vec() });
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
}
