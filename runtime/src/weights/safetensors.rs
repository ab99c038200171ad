//! The safetensors container: an 8-byte little-endian header length, a JSON header mapping tensor names to
//! `{dtype, shape, data_offsets}`, then the data. Parsed by hand so that every defect is reported with the file's
//! name and so that tensor data stays in the memory map (no copy).
use std::{collections::HashMap, path::Path, sync::Arc};

use memmap2::Mmap;
use serde_json::Value;

use super::Dtype;
use crate::{Error, Result};

/// Where one tensor lives inside a mapped file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the whole file (header included).
    pub start: usize,
    pub end: usize,
}

pub struct SafetensorsFile {
    pub map: Arc<Mmap>,
    pub tensors: HashMap<String, TensorInfo>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only; a checkpoint being rewritten while served is outside what we guard
        // against (as in every mmap-based loader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let tensors = parse_header(&map).map_err(|reason| Error::Safetensors { path: path.to_path_buf(), reason })?;
        Ok(SafetensorsFile { map: Arc::new(map), tensors })
    }
}

fn parse_header(bytes: &[u8]) -> Result<HashMap<String, TensorInfo>, String> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("file is {} bytes, shorter than the 8-byte header length", bytes.len()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    let data_start =
        8u64.checked_add(header_len).filter(|&end| end <= bytes.len() as u64).ok_or_else(|| {
            format!("header length {header_len} runs past the end of the file ({} bytes)", bytes.len())
        })? as usize;
    let header: Value =
        serde_json::from_slice(&bytes[8..data_start]).map_err(|e| format!("header is not JSON: {e}"))?;
    let entries = header.as_object().ok_or("header is not a JSON object")?;
    let data_len = bytes.len() - data_start;
    let mut tensors = HashMap::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let info = parse_entry(entry).map_err(|e| format!("tensor {name}: {e}"))?;
        if info.1 > data_len || info.0 > info.1 {
            return Err(format!(
                "tensor {name}: data_offsets [{}, {}] run past the end of the data ({data_len} bytes); the file is truncated or corrupt",
                info.0, info.1
            ));
        }
        let (start, end, dtype, shape) = info;
        if let Some(size) = dtype.size() {
            let expected = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
            if expected != Some(end - start) {
                return Err(format!(
                    "tensor {name}: shape {shape:?} of {dtype} needs {expected:?} bytes but data_offsets span {}",
                    end - start
                ));
            }
        }
        tensors.insert(name.clone(), TensorInfo { dtype, shape, start: data_start + start, end: data_start + end });
    }
    Ok(tensors)
}

fn parse_entry(entry: &Value) -> Result<(usize, usize, Dtype, Vec<usize>), String> {
    let dtype = entry.get("dtype").and_then(Value::as_str).ok_or("dtype missing")?;
    let shape = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("shape missing")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or("shape is not a list of integers"))
        .collect::<Result<Vec<_>, _>>()?;
    let offsets = entry.get("data_offsets").and_then(Value::as_array).ok_or("data_offsets missing")?;
    let offset = |i: usize| offsets.get(i).and_then(Value::as_u64).map(|o| o as usize).ok_or("bad data_offsets");
    if offsets.len() != 2 {
        return Err("data_offsets must have two entries".into());
    }
    Ok((offset(0)?, offset(1)?, Dtype::parse(dtype), shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_and_validates() {
        let ok = file(
            r#"{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#,
            &[0; 8],
        );
        let t = parse_header(&ok).unwrap();
        assert_eq!(t["a"].shape, vec![2, 2]);
        assert_eq!(t["a"].end - t["a"].start, 8);

        let truncated = &ok[..ok.len() - 3];
        assert!(parse_header(truncated).unwrap_err().contains("truncated"));
        assert!(parse_header(&ok[..5]).is_err());
        let bad_len = file(r#"{"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]);
        assert!(parse_header(&bad_len).unwrap_err().contains("needs"));
        let mut huge = ok.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_header(&huge).unwrap_err().contains("header length"));
        assert!(parse_header(&file("not json", &[])).unwrap_err().contains("JSON"));
    }
}
