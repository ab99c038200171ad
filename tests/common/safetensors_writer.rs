//! Writes small safetensors files of random tensors, so tests can build weights of any shape.
use std::path::Path;

use glmv_runtime::weights::WeightStore;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.next_u32() as f32 / 2_147_483_648.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

pub enum Data {
    F32(Vec<f32>),
    /// f32 values stored as BF16 (truncated).
    Bf16(Vec<f32>),
    /// Raw FP8 E4M3 bytes.
    Fp8(Vec<u8>),
}

pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

pub fn tensor(name: &str, shape: &[usize], data: Data) -> TensorSpec {
    TensorSpec { name: name.to_string(), shape: shape.to_vec(), data }
}

/// Random FP8 bytes without NaN encodings.
pub fn fp8_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let b = (rng.next_u32() & 0xff) as u8;
            // Keep magnitudes moderate (exponent <= 8) and avoid 0x7f / 0xff (NaN).
            (b & 0x80) | (b & 0x47)
        })
        .collect()
}

pub fn write(path: &Path, tensors: &[TensorSpec]) -> WeightStore {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in tensors {
        let (dtype, bytes): (&str, Vec<u8>) = match &t.data {
            Data::F32(v) => ("F32", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::Bf16(v) => ("BF16", v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect()),
            Data::Fp8(v) => ("F8_E4M3", v.clone()),
        };
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
    WeightStore::open_file(path).unwrap()
}
