//! Writes safetensors files: the demo model and test checkpoints are made with it.
use std::{io::Write, path::Path};

use crate::{Error, Result};

/// One tensor to write: its dtype as safetensors names it (`BF16`, `F32`, `F8_E4M3`) and its raw bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// f32 values stored as BF16, rounded to nearest even.
    pub fn bf16(name: impl Into<String>, shape: &[usize], values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|&x| crate::weights::f32_to_bf16_rne(x).to_le_bytes()).collect();
        RawTensor { name: name.into(), dtype: "BF16", shape: shape.to_vec(), bytes }
    }

    pub fn f32(name: impl Into<String>, shape: &[usize], values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        RawTensor { name: name.into(), dtype: "F32", shape: shape.to_vec(), bytes }
    }
}

pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| Error::InvalidInput(e.to_string()))?;
    // The data section starts 8-byte aligned, as the reference writer pads it.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| Error::io(path, e);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for t in tensors {
        w.write_all(&t.bytes).map_err(io)?;
    }
    w.flush().map_err(io)
}
