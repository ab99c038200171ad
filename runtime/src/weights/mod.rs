//! Checkpoint tensors: single-file and sharded safetensors over memmap2, BF16/F16/F32 and FP8 (per-channel
//! `weight_scale` or block `weight_scale_inv`). Tensors are handed to backends as views into the memory map, so a
//! multi-GB checkpoint is never copied into RAM wholesale; each backend converts what it needs.
mod dtype;
pub(crate) mod dummy;
pub mod layout;
mod linear;
mod safetensors;
pub mod writer;

use std::{
    collections::{BTreeSet, HashMap},
    ops::Deref,
    path::{Path, PathBuf},
    sync::Arc,
};

use memmap2::Mmap;

pub use dtype::{
    bf16_to_f32, f16_to_f32, f32_to_bf16_rne, f32_to_f8e4m3_rne, f8e4m3_to_f32, to_f32, Dtype, F8E4M3_TABLE,
};
pub use linear::{Fp8Scale, LinearSource, LinearWeight};
use safetensors::{SafetensorsFile, TensorInfo};

use crate::{config::read_json, Error, Result};

/// Bytes of one tensor: a range of a shared memory map, or the bytes of a dummy tensor, made when first read.
#[derive(Clone)]
pub struct MappedBytes {
    backing: Backing,
    start: usize,
    end: usize,
}

#[derive(Clone)]
enum Backing {
    Map(Arc<Mmap>),
    Generated(Arc<dummy::Generated>),
}

impl MappedBytes {
    fn generated(g: dummy::Generated) -> Self {
        let end = g.len;
        MappedBytes { backing: Backing::Generated(Arc::new(g)), start: 0, end }
    }

    /// The number of bytes, without making a dummy tensor's.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether these are a dummy tensor's bytes not yet made on the host (a backend that makes them on its device
    /// never makes them here).
    pub fn is_pending(&self) -> bool {
        matches!(&self.backing, Backing::Generated(g) if !g.is_made_on_host())
    }

    /// How to make these bytes, where they are a dummy tensor's.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn recipe(&self) -> Option<&dummy::Generated> {
        match &self.backing {
            Backing::Generated(g) => Some(g),
            Backing::Map(_) => None,
        }
    }
}

impl Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.backing {
            Backing::Map(map) => &map[self.start..self.end],
            Backing::Generated(g) => &g.host_bytes()[self.start..self.end],
        }
    }
}

/// One checkpoint tensor: name, dtype, shape and its bytes in the memory map.
#[derive(Clone)]
pub struct HostTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: MappedBytes,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The whole tensor as f32; for small tensors (norms, biases, scales, routers).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if !self.dtype.is_float() {
            return Err(Error::UnsupportedDtype {
                name: self.name.clone(),
                dtype: self.dtype.to_string(),
                context: "is not a float type",
            });
        }
        let mut out = vec![0.0; self.numel()];
        to_f32(self.dtype, &self.bytes, &mut out);
        Ok(out)
    }

    pub fn expect_shape(&self, expected: &[usize]) -> Result<&Self> {
        if self.shape != expected {
            return Err(Error::ShapeMismatch {
                name: self.name.clone(),
                expected: expected.to_vec(),
                actual: self.shape.clone(),
            });
        }
        Ok(self)
    }
}

/// All tensors of a checkpoint directory, by name.
pub struct WeightStore {
    files: Vec<SafetensorsFile>,
    /// name -> (file index, location)
    index: HashMap<String, (usize, TensorInfo)>,
    total_bytes: u64,
    /// `--load-format dummy`: tensors made on demand instead of read from files.
    dummy: Option<dummy::DummyWeights>,
}

impl WeightStore {
    /// Random weights of the shapes and dtypes a checkpoint of `config` holds (see `dummy`), seeded.
    pub fn dummy(config: &crate::config::ModelConfig, seed: u64) -> Self {
        let dummy = dummy::DummyWeights::new(config, seed);
        WeightStore { files: Vec::new(), index: HashMap::new(), total_bytes: dummy.total_bytes(), dummy: Some(dummy) }
    }

    /// Opens `model.safetensors`, or every shard named by `model.safetensors.index.json`. Only headers are read;
    /// `progress` is told about each shard as it is mapped.
    pub fn open(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (shards, weight_map) = if index_path.exists() {
            let (shards, map) = read_index(dir, &index_path)?;
            (shards, Some(map))
        } else if single.exists() {
            (vec![single], None)
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::Safetensors {
                    path: dir.to_path_buf(),
                    reason: "no model.safetensors, model.safetensors.index.json or *.safetensors here".into(),
                });
            }
            (found, None)
        };
        let mut files = Vec::with_capacity(shards.len());
        let mut index = HashMap::new();
        let mut total_bytes = 0u64;
        for (i, path) in shards.iter().enumerate() {
            let file = SafetensorsFile::open(path)?;
            total_bytes += file.map.len() as u64;
            progress(&format!(
                "mapped shard {}/{} {} ({:.2} GB, {} tensors)",
                i + 1,
                shards.len(),
                path.file_name().unwrap_or_default().to_string_lossy(),
                file.map.len() as f64 / 1e9,
                file.tensors.len()
            ));
            for (name, info) in &file.tensors {
                index.insert(name.clone(), (i, info.clone()));
            }
            files.push(file);
        }
        if let Some(map) = weight_map {
            // Every tensor the index promises must be in the shard it names.
            if let Some((name, file)) = map.iter().find(|(name, _)| !index.contains_key(*name)) {
                return Err(Error::Safetensors {
                    path: index_path,
                    reason: format!("tensor {name} is listed for {file} but that shard does not contain it"),
                });
            }
        }
        Ok(WeightStore { files, index, total_bytes, dummy: None })
    }

    /// One safetensors file on its own (test fixtures, tools).
    pub fn open_file(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let index = file.tensors.iter().map(|(n, info)| (n.clone(), (0, info.clone()))).collect();
        Ok(WeightStore { total_bytes: file.map.len() as u64, files: vec![file], index, dummy: None })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.dummy.as_ref().is_some_and(|d| d.contains(name))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str).chain(self.dummy.iter().flat_map(|d| d.names()))
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// With `--load-format dummy`, the bytes made on the host so far: what a device backend did not make itself.
    pub fn dummy_bytes_made_on_host(&self) -> Option<u64> {
        self.dummy.as_ref().map(|d| d.made_on_host())
    }

    pub fn get(&self, name: &str) -> Result<HostTensor> {
        if let Some(dummy) = &self.dummy {
            return dummy.get(name);
        }
        let (file, info) = self.index.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        Ok(HostTensor {
            name: name.to_string(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: MappedBytes {
                backing: Backing::Map(self.files[*file].map.clone()),
                start: info.start,
                end: info.end,
            },
        })
    }

    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.get(name)?;
        t.expect_shape(shape)?;
        Ok(t)
    }
}

type WeightMap = serde_json::Map<String, serde_json::Value>;

/// The shard files named by an index, each checked to exist, and the index's name -> shard map.
fn read_index(dir: &Path, index_path: &Path) -> Result<(Vec<PathBuf>, WeightMap)> {
    let mut index = read_json(index_path)?;
    let map = match index.get_mut("weight_map").map(serde_json::Value::take) {
        Some(serde_json::Value::Object(map)) => map,
        _ => return Err(Error::Safetensors { path: index_path.to_path_buf(), reason: "weight_map is missing".into() }),
    };
    let mut shards = BTreeSet::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| Error::Safetensors {
            path: index_path.to_path_buf(),
            reason: "weight_map values must be file names".into(),
        })?;
        shards.insert(file.to_string());
    }
    let paths = shards
        .into_iter()
        .map(|s| {
            let p = dir.join(&s);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::MissingShard { shard: p, index: index_path.to_path_buf() })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((paths, map))
}
