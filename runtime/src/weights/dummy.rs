//! `--load-format dummy`: every tensor a checkpoint of this config holds ([`bf16_layout`]), in the dtypes its
//! quantization scheme gives them, filled with seeded random values of a tame scale where they are used: on the host
//! when read there, on a device by a backend that can (the CUDA backend), the same bytes either way. How the real
//! GLM-4.5V shapes are benchmarked without a checkpoint (SGLang's `--load-format dummy`); the values mean nothing.
//!
//! FP8 placement follows the FP8 checkpoints (reference/model.md §7): the language model's attention, dense MLP,
//! expert and shared-expert projections are F8_E4M3 with F32 scales; embeddings, lm_head, the router, norms,
//! biases and the whole vision tower stay BF16.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use super::{
    f32_to_bf16_rne,
    layout::{bf16_layout, TensorKind},
    Dtype, HostTensor, MappedBytes,
};
use crate::{
    config::{ModelConfig, WeightQuant},
    Error, Result,
};

/// Bytes made per task when a large tensor is made on the host's threads.
const CHUNK_BYTES: usize = 1 << 19;

/// How a dummy tensor's values are made. Each 64-bit random word gives [`Fill::word_bytes`] bytes, so any range of
/// a tensor can be made on its own, the same on the host and on a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fill {
    /// Uniform in [-a, a], BF16.
    Bf16Uniform(f32),
    /// Uniform in [-a, a], F32.
    F32Uniform(f32),
    Bf16Ones,
    /// F8_E4M3 codes of magnitude below one (exponent field 0..=6), random sign.
    Fp8Codes,
    F32Const(f32),
}

struct DummyTensor {
    shape: Vec<usize>,
    fill: Fill,
}

impl DummyTensor {
    fn dtype(&self) -> Dtype {
        match self.fill {
            Fill::Bf16Uniform(_) | Fill::Bf16Ones => Dtype::BF16,
            Fill::F32Uniform(_) | Fill::F32Const(_) => Dtype::F32,
            Fill::Fp8Codes => Dtype::F8E4M3,
        }
    }
}

impl Fill {
    /// Bytes made from one random word.
    pub(crate) fn word_bytes(self) -> usize {
        match self {
            Fill::Fp8Codes | Fill::F32Uniform(_) => 8,
            Fill::Bf16Uniform(_) => 4,
            Fill::Bf16Ones => 2,
            Fill::F32Const(_) => 4,
        }
    }
}

/// A dummy tensor's bytes: its recipe, made on the host only when something reads them there. A backend that can
/// make them where they will live (the CUDA backend's `dummy_fill` kernel) never asks for them here.
pub(crate) struct Generated {
    pub(crate) fill: Fill,
    pub(crate) seed: u64,
    pub(crate) len: usize,
    host: std::sync::OnceLock<Box<[u8]>>,
    /// The store's count of bytes made on the host.
    made_on_host: Arc<AtomicU64>,
}

impl Generated {
    pub(crate) fn host_bytes(&self) -> &[u8] {
        self.host.get_or_init(|| {
            self.made_on_host.fetch_add(self.len as u64, Ordering::Relaxed);
            make(self.fill, self.seed, self.len)
        })
    }

    pub(crate) fn is_made_on_host(&self) -> bool {
        self.host.get().is_some()
    }
}

/// `len` bytes of `fill`, on the host's threads when there are many (a 108 GB checkpoint is made at every start).
fn make(fill: Fill, seed: u64, len: usize) -> Box<[u8]> {
    let mut bytes = vec![0u8; len];
    let word = fill.word_bytes();
    let fill_chunk = |(i, out): (usize, &mut [u8])| fill_words(fill, seed, (i * CHUNK_BYTES / word) as u64, out);
    let chunks = bytes.chunks_mut(CHUNK_BYTES).enumerate();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if len <= 4 * CHUNK_BYTES || threads == 1 {
        chunks.for_each(fill_chunk);
    } else {
        // Round-robin the chunks over the threads; each chunk's values depend only on where it starts.
        let mut lanes: Vec<Vec<(usize, &mut [u8])>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, chunk) in chunks {
            lanes[i % threads].push((i, chunk));
        }
        std::thread::scope(|s| {
            for lane in lanes {
                s.spawn(move || lane.into_iter().for_each(fill_chunk));
            }
        });
    }
    bytes.into_boxed_slice()
}

/// The tensors of a dummy checkpoint, made when asked for.
pub(crate) struct DummyWeights {
    tensors: HashMap<String, DummyTensor>,
    seed: u64,
    made_on_host: Arc<AtomicU64>,
}

/// Whether the FP8 checkpoints store this tensor in FP8: the language model's 2-D projections but the router.
fn is_fp8(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.starts_with("model.language_model.layers.") && !name.ends_with(".mlp.gate.weight")
}

impl DummyWeights {
    pub(crate) fn new(config: &ModelConfig, seed: u64) -> Self {
        let mut tensors = HashMap::new();
        for t in bf16_layout(config) {
            let fan_in: usize = t.shape[1..].iter().product::<usize>().max(1);
            // Unit-variance outputs for unit-variance inputs: uniform [-a, a] has variance a^2 / 3.
            let unit = (3.0 / fan_in as f32).sqrt();
            let fill = match t.kind {
                TensorKind::NormWeight => Fill::Bf16Ones,
                TensorKind::Bias => Fill::Bf16Uniform(0.02),
                TensorKind::RouterBias => Fill::F32Uniform(0.01),
                TensorKind::Weight => Fill::Bf16Uniform(unit),
            };
            let quantized =
                config.quantization.as_ref().filter(|_| t.kind == TensorKind::Weight && is_fp8(&t.name, &t.shape));
            let Some(quant) = quantized else {
                tensors.insert(t.name, DummyTensor { shape: t.shape, fill });
                continue;
            };
            let (out, inp) = (t.shape[0], t.shape[1]);
            let prefix = t.name.strip_suffix(".weight").unwrap_or(&t.name).to_string();
            // The codes' RMS is about 0.4, so this scale keeps outputs near unit variance like the BF16 weights.
            let scale = Fill::F32Const(unit / 0.4 / 3f32.sqrt());
            match quant.weights {
                WeightQuant::PerChannel => {
                    tensors.insert(format!("{prefix}.weight_scale"), DummyTensor { shape: vec![out, 1], fill: scale });
                }
                WeightQuant::Block { block } => {
                    let shape = vec![out.div_ceil(block[0]), inp.div_ceil(block[1])];
                    tensors.insert(format!("{prefix}.weight_scale_inv"), DummyTensor { shape, fill: scale });
                }
            }
            tensors.insert(t.name, DummyTensor { shape: t.shape, fill: Fill::Fp8Codes });
        }
        DummyWeights { tensors, seed, made_on_host: Default::default() }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Bytes of tensors made on the host so far (the rest were made on a device, or not asked for).
    pub(crate) fn made_on_host(&self) -> u64 {
        self.made_on_host.load(Ordering::Relaxed)
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| (t.shape.iter().product::<usize>() * t.dtype().size().unwrap_or(1)) as u64).sum()
    }

    /// The tensor, its bytes to be made when read (see [`Generated`]).
    pub(crate) fn get(&self, name: &str) -> Result<HostTensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        let dtype = t.dtype();
        let len = t.shape.iter().product::<usize>() * dtype.size().unwrap_or(1);
        let seed = self.seed ^ fnv1a(name.as_bytes());
        let made_on_host = self.made_on_host.clone();
        let generated = Generated { fill: t.fill, seed, len, host: Default::default(), made_on_host };
        Ok(HostTensor {
            name: name.to_string(),
            dtype,
            shape: t.shape.clone(),
            bytes: MappedBytes::generated(generated),
        })
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Random word `i` of the tensor seeded `seed`: splitmix64's `i`-th output (kernels-cuda/elementwise.cu
/// dummy_word makes the same).
fn word(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 24 random bits to [-1, 1) times `a`: every step exact but the last product, so a GPU makes the same value.
fn uniform(bits: u64, a: f32) -> f32 {
    a * ((bits & 0xff_ffff) as f32 / (1u64 << 23) as f32 - 1.0)
}

/// Fills `out`, which starts at random word `first_word` of the tensor, with `kind`'s values.
fn fill_words(kind: Fill, seed: u64, first_word: u64, out: &mut [u8]) {
    let words = out.chunks_mut(kind.word_bytes()).zip(first_word..);
    match kind {
        Fill::Bf16Uniform(a) => {
            for (pair, i) in words {
                let r = word(seed, i);
                for (bytes, bits) in pair.chunks_exact_mut(2).zip([r >> 40, r >> 8]) {
                    bytes.copy_from_slice(&f32_to_bf16_rne(uniform(bits, a)).to_le_bytes());
                }
            }
        }
        Fill::F32Uniform(a) => {
            for (pair, i) in words {
                let r = word(seed, i);
                for (bytes, bits) in pair.chunks_exact_mut(4).zip([r >> 40, r >> 8]) {
                    bytes.copy_from_slice(&uniform(bits, a).to_le_bytes());
                }
            }
        }
        Fill::Fp8Codes => {
            for (codes, i) in words {
                for (v, b) in codes.iter_mut().zip(word(seed, i).to_le_bytes()) {
                    // Sign bit, then one of the 56 codes with exponent field 0..=6 (magnitudes below one, no NaN).
                    *v = (b & 0x80) | (u16::from(b & 0x3f) * 7 / 8) as u8;
                }
            }
        }
        Fill::Bf16Ones => {
            for (v, _) in words {
                v.copy_from_slice(&f32_to_bf16_rne(1.0).to_le_bytes());
            }
        }
        Fill::F32Const(c) => {
            for (v, _) in words {
                v.copy_from_slice(&c.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{f8e4m3_to_f32, WeightStore};

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name).join("checkpoint")
    }

    /// A dummy store names the same tensors, with the same dtypes and shapes, as each fixture checkpoint that
    /// transformers saved (BF16, FP8 per-channel and FP8 block), so the model loader cannot tell them apart.
    #[test]
    fn dummy_tensors_match_the_fixture_checkpoints() {
        for name in ["moe_bf16", "dense_bf16", "moe_fp8_channel", "moe_fp8_block", "dense_fp8_block"] {
            let dir = fixture(name);
            let config = ModelConfig::from_dir(&dir).unwrap();
            let real = WeightStore::open(&dir, &mut |_| {}).unwrap();
            let dummy = WeightStore::dummy(&config, 7);
            // MTP layers (past num_hidden_layers) are in some checkpoints; the loader skips them.
            let layers = config.text.num_hidden_layers;
            let is_mtp = |n: &str| {
                n.strip_prefix("model.language_model.layers.")
                    .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
                    .is_some_and(|l| l >= layers)
            };
            let mut want: Vec<&str> = real.names().filter(|n| !is_mtp(n)).collect();
            let mut got: Vec<&str> = dummy.names().collect();
            want.sort_unstable();
            got.sort_unstable();
            let missing: Vec<_> = want.iter().filter(|n| !got.contains(n)).collect();
            let extra: Vec<_> = got.iter().filter(|n| !want.contains(n)).collect();
            assert!(missing.is_empty() && extra.is_empty(), "{name}: missing {missing:?}, extra {extra:?}");
            for n in want {
                let (r, d) = (real.get(n).unwrap(), dummy.get(n).unwrap());
                assert_eq!((d.shape.clone(), d.bytes.len()), (r.shape.clone(), r.bytes.len()), "{name}: {n}");
                // Scales may be stored BF16 or F32; every other tensor keeps the checkpoint's dtype.
                if !n.contains("weight_scale") {
                    assert_eq!(d.dtype, r.dtype, "{name}: {n}");
                }
            }
        }
    }

    #[test]
    fn values_are_finite_seeded_and_tame() {
        let config = ModelConfig::from_dir(&fixture("moe_fp8_block")).unwrap();
        let a = WeightStore::dummy(&config, 1);
        let b = WeightStore::dummy(&config, 1);
        let c = WeightStore::dummy(&config, 2);
        let name = "model.language_model.layers.1.mlp.experts.0.up_proj.weight";
        let t = a.get(name).unwrap();
        assert_eq!(t.dtype, Dtype::F8E4M3);
        assert_eq!(&t.bytes[..], &b.get(name).unwrap().bytes[..]);
        assert_ne!(&t.bytes[..], &c.get(name).unwrap().bytes[..]);
        assert!(t.bytes.iter().all(|&v| f8e4m3_to_f32(v).abs() < 1.0));
        let embed = a.get("model.language_model.embed_tokens.weight").unwrap().to_f32_vec().unwrap();
        let bound = (3.0 / config.text.hidden_size as f32).sqrt();
        assert!(embed.iter().all(|v| v.is_finite() && v.abs() <= bound * 1.01));
        let mean_abs = embed.iter().map(|v| v.abs()).sum::<f32>() / embed.len() as f32;
        assert!((mean_abs - bound / 2.0).abs() < bound * 0.05, "uniform in [-{bound}, {bound}]: mean |x| {mean_abs}");
    }

    /// Large tensors are made on several threads and a device makes any range of one on its own: every byte
    /// depends only on the seed and where it is, down to a last partial word.
    #[test]
    fn values_depend_only_on_their_position() {
        for fill in
            [Fill::Bf16Uniform(0.5), Fill::F32Uniform(0.01), Fill::Fp8Codes, Fill::Bf16Ones, Fill::F32Const(3.0)]
        {
            let element = if fill == Fill::Fp8Codes { 1 } else { fill.word_bytes().min(4) };
            let len = (5 * CHUNK_BYTES + 3 * element).next_multiple_of(element);
            let threaded = make(fill, 9, len);
            let mut serial = vec![0u8; len];
            fill_words(fill, 9, 0, &mut serial);
            assert!(threaded[..] == serial[..], "{fill:?}");
            let from = 12345 * fill.word_bytes();
            let mut tail = vec![0u8; len - from];
            fill_words(fill, 9, 12345, &mut tail);
            assert!(tail[..] == serial[from..], "{fill:?}");
        }
    }

    /// A dummy tensor's bytes are made when read on the host, not before (a device backend makes them itself).
    #[test]
    fn bytes_are_made_when_read() {
        let config = ModelConfig::from_dir(&fixture("dense_bf16")).unwrap();
        let store = WeightStore::dummy(&config, 5);
        let t = store.get("model.language_model.embed_tokens.weight").unwrap();
        assert_eq!(t.bytes.len(), 416 * 64 * 2);
        assert!(t.bytes.is_pending());
        let copy = t.clone();
        assert_eq!(t.to_f32_vec().unwrap().len(), 416 * 64);
        assert!(!copy.bytes.is_pending(), "clones share the bytes made once");
        assert_eq!(store.dummy_bytes_made_on_host(), Some(416 * 64 * 2));
    }
}
