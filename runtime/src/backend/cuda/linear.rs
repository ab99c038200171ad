//! Weights on the device and the layers built from them: linear (GEMM/GEMV over stored dtypes), SwiGLU MLP, MoE.
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use glmv_codegen::RowOp;

use super::{
    device_err,
    fp8_inputs::{fp8_mma_group, quantize_rows, LinearInput},
    kernels::WeightDtype,
    CudaBackend, CudaTensor,
};
use crate::{
    backend::{ExpertsSource, MlpSource, Routing},
    config::InputQuant,
    weights::{Dtype, Fp8Scale, LinearSource, LinearWeight},
    Error, Result,
};

/// The `WeightScale` struct of kernels-cuda/common.cuh.
#[repr(C)]
#[derive(Clone, Copy)]
struct ScaleArg {
    scale: u64,
    block_rows: i32,
    block_cols: i32,
    col_blocks: i32,
}
unsafe impl cudarc::driver::DeviceRepr for ScaleArg {}

/// One checkpoint tensor's rows of a linear layer.
struct Part {
    dtype: WeightDtype,
    weight: CudaSlice<u8>,
    scale: Option<CudaSlice<f32>>,
    block: [usize; 2],
    rows: usize,
    /// First output column of this part.
    offset: usize,
}

pub struct CudaLinear {
    parts: Vec<Part>,
    /// Shared by every part: they multiply the same input.
    input: InputQuant,
    pub in_features: usize,
    pub out_features: usize,
    bias: Option<CudaSlice<f32>>,
}

impl Part {
    fn element_bytes(&self) -> usize {
        match self.dtype {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 | WeightDtype::F16 => 2,
            WeightDtype::Fp8 => 1,
        }
    }

    /// Whether the 16-byte-load GEMV applies: rows of whole 16-byte chunks, block scales constant per chunk.
    fn vector_loads(&self, k: usize) -> bool {
        let bytes = self.element_bytes();
        let per_chunk = 16 / bytes;
        let scale_ok = self.scale.is_none() || self.block[1] == k || self.block[1].is_multiple_of(per_chunk);
        (k * bytes).is_multiple_of(16) && scale_ok
    }
}

/// Rows of a GEMM handled by the GEMV kernel (kernels-cuda/gemm.cu GEMV_MAX_ROWS).
const GEMV_MAX_ROWS: usize = 8;

/// How a tensor-core GEMM of `tiles` 64 x 64 output tiles over `k` input columns splits K on a device of `sms`
/// multiprocessors: (splits, columns per split). Few tiles (a decode batch of 9-64 rows, a small layer) leave most
/// of the device idle while each block walks all of K; splitting K gives about two blocks per multiprocessor, each
/// split at least 256 columns, at most 8 splits, split boundaries on the kernel's 32-column steps.
fn k_splits(tiles: usize, k: usize, sms: usize) -> (usize, usize) {
    let wanted = (2 * sms).div_ceil(tiles.max(1)).min(8).min(k / 256).max(1);
    if wanted == 1 {
        return (1, 0);
    }
    let k_split = k.div_ceil(wanted).div_ceil(32) * 32;
    (k.div_ceil(k_split), k_split)
}

impl CudaLinear {
    pub fn new(be: &CudaBackend, sources: &[LinearSource]) -> Result<Self> {
        let first = sources.first().ok_or_else(|| Error::InvalidInput("a linear layer needs a weight".into()))?;
        let k = first.weight.in_features();
        let input = LinearSource::shared_input(sources)?;
        let mut parts = Vec::with_capacity(sources.len());
        let mut offset = 0;
        let mut bias = Vec::new();
        let any_bias = sources.iter().any(|s| s.bias.is_some());
        for s in sources {
            let t = s.weight.tensor();
            if s.weight.in_features() != k {
                return Err(Error::ShapeMismatch {
                    name: t.name.clone(),
                    expected: vec![s.out_features(), k],
                    actual: t.shape.clone(),
                });
            }
            let rows = s.out_features();
            let dtype = match t.dtype {
                Dtype::F32 => WeightDtype::F32,
                Dtype::BF16 => WeightDtype::Bf16,
                Dtype::F16 => WeightDtype::F16,
                Dtype::F8E4M3 => WeightDtype::Fp8,
                other => {
                    return Err(Error::UnsupportedDtype {
                        name: t.name.clone(),
                        dtype: other.to_string(),
                        context: "the CUDA backend cannot use as a weight",
                    })
                }
            };
            let (scale, block) = match &s.weight {
                LinearWeight::Dense(_) => (None, [1, k]),
                LinearWeight::Fp8 { scale: Fp8Scale::PerChannel(sc), .. } => (Some(sc.to_f32_vec()?), [1, k]),
                LinearWeight::Fp8 { scale: Fp8Scale::Block { scale_inv, block }, .. } => {
                    (Some(scale_inv.to_f32_vec()?), *block)
                }
            };
            parts.push(Part {
                dtype,
                weight: be.upload_weight(&t.bytes)?,
                scale: scale.map(|s| be.upload_slice(&s)).transpose()?,
                block,
                rows,
                offset,
            });
            if any_bias {
                match &s.bias {
                    Some(b) => bias.extend(b.to_f32_vec()?),
                    None => bias.extend(std::iter::repeat_n(0.0, rows)),
                }
            }
            offset += rows;
        }
        let bias = any_bias.then(|| be.upload_slice(&bias)).transpose()?;
        Ok(CudaLinear { parts, input, in_features: k, out_features: offset, bias })
    }

    fn scale_arg(&self, be: &CudaBackend, p: &Part) -> ScaleArg {
        ScaleArg {
            scale: p.scale.as_ref().map_or(0, |s| be.ptr(s)),
            block_rows: p.block[0] as i32,
            block_cols: p.block[1] as i32,
            col_blocks: self.in_features.div_ceil(p.block[1]) as i32,
        }
    }

    pub fn forward(&self, be: &CudaBackend, x: &CudaTensor) -> Result<CudaTensor> {
        if x.cols != self.in_features {
            return Err(Error::InvalidInput(format!(
                "linear expects {} input features, got {}",
                self.in_features, x.cols
            )));
        }
        let y = be.alloc(x.rows, self.out_features)?;
        if x.rows == 0 {
            return Ok(y);
        }
        // The input as each part's kernel takes it (exact, quantised values, or FP8 codes), made once.
        let mut input = LinearInput::new(x, self.input);
        let (m, k, ldy) = (x.rows as i32, self.in_features as i32, self.out_features as i32);
        for p in &self.parts {
            let n = p.rows as i32;
            let scale = self.scale_arg(be, p);
            let wp = be.ptr(&p.weight);
            let bp = self.bias.as_ref().map_or(0, |b| be.ptr(b) + (p.offset * 4) as u64);
            let yp = be.ptr(&y.buf) + (p.offset * 4) as u64;
            if x.rows <= GEMV_MAX_ROWS {
                let xp = be.ptr(&input.values(be)?.buf);
                let blocks = (p.rows * 32).div_ceil(256) as u32;
                let f = if p.vector_loads(self.in_features) {
                    let specialised = be.row_kernel(RowOp::Gemv, p.dtype, self.in_features);
                    specialised.unwrap_or(&be.k.gemv_vec[p.dtype as usize])
                } else {
                    &be.k.gemv[p.dtype as usize]
                };
                let mut b = be.stream.launch_builder(f);
                b.arg(&xp).arg(&m).arg(&k).arg(&wp).arg(&scale).arg(&bp).arg(&n).arg(&yp).arg(&ldy);
                let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), ..be.launch_rows(1) };
                // SAFETY: matches kernels-cuda/gemm.cu gemv_*; y has ldy columns and this part writes columns
                // offset .. offset + rows.
                unsafe { b.launch(cfg) }.map_err(device_err)?;
                continue;
            }
            let tiles = (p.rows.div_ceil(TC_TILE), x.rows.div_ceil(TC_TILE));
            let (splits, k_split) =
                if be.paths.split_k_gemm { k_splits(tiles.0 * tiles.1, self.in_features, be.sm_count) } else { (1, 0) };
            let tile_grid = |splits: usize| LaunchConfig {
                grid_dim: (tiles.0 as u32, tiles.1 as u32, splits as u32),
                block_dim: (TC_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let fp8_group = (be.paths.fp8_mma && splits == 1 && p.dtype == WeightDtype::Fp8)
                .then(|| fp8_mma_group(input.quant(), self.in_features, p.block[1]))
                .flatten();
            if let Some(group) = fp8_group {
                let codes = input.codes(be, group)?;
                let (cp, sp, g) = (be.ptr(&codes.codes), be.ptr(&codes.scales), group as i32);
                let mut b = be.stream.launch_builder(&be.k.gemm_fp8_tc);
                b.arg(&cp).arg(&sp).arg(&g).arg(&m).arg(&k).arg(&wp).arg(&scale).arg(&bp).arg(&n).arg(&yp).arg(&ldy);
                // SAFETY: matches kernels-cuda/gemm.cu gemm_fp8_tc (conditions checked by fp8_mma_group); y has ldy
                // columns and this part writes columns offset .. offset + rows.
                unsafe { b.launch(tile_grid(1)) }.map_err(device_err)?;
                continue;
            }
            let xp = be.ptr(&input.values(be)?.buf);
            // Every split writes all of its [rows, part rows] (poisoned in tests like any activation).
            let partial = if splits > 1 { Some(be.alloc(splits * x.rows, p.rows)?) } else { None };
            let (ks, pp) = (k_split as i32, partial.as_ref().map_or(0, |t| be.ptr(&t.buf)));
            let mut b = be.stream.launch_builder(&be.k.gemm[p.dtype as usize]);
            b.arg(&xp).arg(&m).arg(&k).arg(&wp).arg(&scale).arg(&bp).arg(&n).arg(&yp).arg(&ldy).arg(&ks).arg(&pp);
            // SAFETY: matches kernels-cuda/gemm.cu gemm_tc_*; y has ldy columns and this part writes columns
            // offset .. offset + rows; with splits, partial holds splits x [rows, part rows].
            unsafe { b.launch(tile_grid(splits)) }.map_err(device_err)?;
            if splits > 1 {
                let sn = splits as i32;
                let mut b = be.stream.launch_builder(&be.k.gemm_split_reduce);
                b.arg(&pp).arg(&sn).arg(&m).arg(&n).arg(&bp).arg(&yp).arg(&ldy);
                let blocks = (x.rows * p.rows).div_ceil(256).clamp(1, 4096) as u32;
                let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), ..be.launch_rows(1) };
                // SAFETY: matches kernels-cuda/gemm.cu gemm_split_reduce over the partial buffer written above.
                unsafe { b.launch(cfg) }.map_err(device_err)?;
            }
        }
        Ok(y)
    }

    /// Rows of the table (this linear's weight, [vocab, hidden]) for each id.
    pub fn embed(&self, be: &CudaBackend, ids: &[u32]) -> Result<CudaTensor> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.out_features) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.out_features
            )));
        }
        let [p] = &self.parts[..] else {
            return Err(Error::InvalidInput("an embedding table is one checkpoint tensor".into()));
        };
        let out = be.alloc(ids.len(), self.in_features)?;
        if ids.is_empty() {
            return Ok(out);
        }
        let idx = be.upload_slice(ids)?;
        let (wp, scale, k, ip, op) =
            (be.ptr(&p.weight), self.scale_arg(be, p), self.in_features as i32, be.ptr(&idx), be.ptr(&out.buf));
        let mut b = be.stream.launch_builder(&be.k.embed[p.dtype as usize]);
        b.arg(&wp).arg(&scale).arg(&k).arg(&ip).arg(&op);
        // SAFETY: matches kernels-cuda/elementwise.cu embed_*; ids checked against the vocabulary above.
        unsafe { b.launch(be.launch_rows(ids.len())) }.map_err(device_err)?;
        Ok(out)
    }
}

pub struct CudaMlp {
    gate_up: CudaLinear,
    down: CudaLinear,
}

impl CudaMlp {
    pub fn new(be: &CudaBackend, src: &MlpSource) -> Result<Self> {
        let gate_up = CudaLinear::new(be, &src.gate_up)?;
        let down = CudaLinear::new(be, std::slice::from_ref(&src.down))?;
        if gate_up.out_features != 2 * down.in_features {
            return Err(Error::InvalidInput("MLP gate+up rows do not match down_proj".into()));
        }
        Ok(CudaMlp { gate_up, down })
    }

    pub fn forward(&self, be: &CudaBackend, x: &CudaTensor) -> Result<CudaTensor> {
        let gu = self.gate_up.forward(be, x)?;
        let inter = self.down.in_features;
        let h = be.alloc(x.rows, inter)?;
        if x.rows > 0 {
            let (gp, hp, rows, i) = (be.ptr(&gu.buf), be.ptr(&h.buf), x.rows as i32, inter as i32);
            let mut b = be.stream.launch_builder(&be.k.swiglu);
            b.arg(&gp).arg(&rows).arg(&i).arg(&hp);
            let blocks = (x.rows * inter).div_ceil(256).clamp(1, 4096) as u32;
            // SAFETY: matches kernels-cuda/elementwise.cu swiglu.
            unsafe { b.launch(LaunchConfig { grid_dim: (blocks, 1, 1), ..be.launch_rows(1) }) }.map_err(device_err)?;
        }
        self.down.forward(be, &h)
    }
}

/// Limits of kernels-cuda/moe.cu.
const MAX_EXPERTS: usize = 512;
const MAX_GROUPS: usize = 64;

/// The `ExpertTable` struct of kernels-cuda/moe.cu: per-expert weight and scale pointers of one projection.
#[repr(C)]
#[derive(Clone, Copy)]
struct ExpertTableArg {
    weight: u64,
    scale: u64,
    block_rows: i32,
    block_cols: i32,
    col_blocks: i32,
}
unsafe impl cudarc::driver::DeviceRepr for ExpertTableArg {}

/// Device pointer tables of gate, up and down projections of every expert, for the fused kernels.
struct ExpertTables {
    dtype: WeightDtype,
    inter: usize,
    hidden: usize,
    /// What gate|up and down do with their inputs (the same for every expert).
    gate_up_input: InputQuant,
    down_input: InputQuant,
    /// Gate, up and down.
    tables: [ProjectionTable; 3],
}

/// One projection of every expert: per-expert weight and scale pointers, and the scale layout they share.
struct ProjectionTable {
    weights: CudaSlice<u64>,
    scales: CudaSlice<u64>,
    block: [usize; 2],
    col_blocks: usize,
}

/// (token, expert) pairs up to which the warp-per-row path runs; beyond, grouped tensor-core GEMMs reuse each
/// expert's weights over its rows.
const FUSED_MAX_PAIRS: usize = 512;
/// Rows and columns of a tensor-core tile and its threads (TC_BM, TC_BN and TC_THREADS in kernels-cuda/mma.cuh).
const TC_TILE: usize = 64;
const TC_THREADS: u32 = 128;

impl ExpertTables {
    /// Possible when every expert's projections share dtype and scale layout and suit 16-byte loads.
    fn new(be: &CudaBackend, experts: &[CudaMlp]) -> Result<Option<Self>> {
        let first = &experts[0];
        let (hidden, inter) = (first.gate_up.in_features, first.down.in_features);
        // (part, row offset within it) of gate, up and down for one expert.
        let projections = |m: &CudaMlp| -> Option<[(usize, usize, usize); 3]> {
            match m.gate_up.parts.len() {
                2 => Some([(0, 0, hidden), (1, 0, hidden), (0, 0, inter)]),
                1 => Some([(0, 0, hidden), (0, inter, hidden), (0, 0, inter)]),
                _ => None,
            }
        };
        let reference = &first.gate_up.parts[0];
        let (gate_up_input, down_input) = (first.gate_up.input, first.down.input);
        if experts.iter().any(|m| m.gate_up.input != gate_up_input || m.down.input != down_input) {
            return Ok(None);
        }
        let mut tables = Vec::new();
        for (which, k) in [(0usize, hidden), (1, hidden), (2, inter)] {
            let (mut weights, mut scales) = (Vec::new(), Vec::new());
            let mut layout = None;
            for m in experts {
                let Some(proj) = projections(m) else { return Ok(None) };
                let (part_index, row_offset, _) = proj[which];
                let linear = if which == 2 { &m.down } else { &m.gate_up };
                let p = &linear.parts[part_index];
                let bytes = p.element_bytes();
                if p.dtype != reference.dtype || !p.vector_loads(k) || (row_offset > 0 && row_offset % p.block[0] != 0)
                {
                    return Ok(None);
                }
                let col_blocks = k.div_ceil(p.block[1]);
                if *layout.get_or_insert((p.block, col_blocks, p.scale.is_some()))
                    != (p.block, col_blocks, p.scale.is_some())
                {
                    return Ok(None);
                }
                weights.push(be.ptr(&p.weight) + (row_offset * k * bytes) as u64);
                scales.push(
                    p.scale.as_ref().map_or(0, |sc| be.ptr(sc) + ((row_offset / p.block[0]) * col_blocks * 4) as u64),
                );
            }
            let (block, col_blocks, _) = layout.expect("at least one expert");
            tables.push(ProjectionTable {
                weights: be.upload_slice(&weights)?,
                scales: be.upload_slice(&scales)?,
                block,
                col_blocks,
            });
        }
        let tables: [_; 3] = tables.try_into().unwrap_or_else(|_| unreachable!("three projections"));
        Ok(Some(ExpertTables { dtype: reference.dtype, inter, hidden, gate_up_input, down_input, tables }))
    }

    fn arg(&self, be: &CudaBackend, which: usize) -> ExpertTableArg {
        let t = &self.tables[which];
        ExpertTableArg {
            weight: be.ptr(&t.weights),
            scale: be.ptr(&t.scales),
            block_rows: t.block[0] as i32,
            block_cols: t.block[1] as i32,
            col_blocks: t.col_blocks as i32,
        }
    }
}

pub struct CudaExperts {
    fused: Option<ExpertTables>,
    router: CudaLinear,
    correction_bias: Option<CudaSlice<f32>>,
    experts: Vec<CudaMlp>,
    shared: Option<CudaMlp>,
    routing: Routing,
}

impl CudaExperts {
    pub fn new(be: &CudaBackend, src: &ExpertsSource) -> Result<Self> {
        let n = src.experts.len();
        let r = src.routing;
        if n > MAX_EXPERTS || r.n_group > MAX_GROUPS || r.n_group == 0 || !n.is_multiple_of(r.n_group) || r.top_k > n {
            return Err(Error::InvalidInput(format!("routing {r:?} over {n} experts is beyond the CUDA MoE kernel")));
        }
        let router_src =
            LinearSource { weight: LinearWeight::Dense(src.router.clone()), bias: None, input: InputQuant::Exact };
        let experts: Vec<CudaMlp> = src.experts.iter().map(|e| CudaMlp::new(be, e)).collect::<Result<_>>()?;
        Ok(CudaExperts {
            fused: if experts.is_empty() { None } else { ExpertTables::new(be, &experts)? },
            router: CudaLinear::new(be, &[router_src])?,
            correction_bias: src
                .correction_bias
                .as_ref()
                .map(|b| be.upload_slice(&b.expect_shape(&[n])?.to_f32_vec()?))
                .transpose()?,
            experts,
            shared: src.shared.as_ref().map(|s| CudaMlp::new(be, s)).transpose()?,
            routing: r,
        })
    }

    pub fn forward(&self, be: &CudaBackend, x: &CudaTensor) -> Result<CudaTensor> {
        let tokens = x.rows;
        let r = &self.routing;
        let logits = self.router.forward(be, x)?;
        let ids = be.stream.alloc_zeros::<u32>((tokens * r.top_k).max(1)).map_err(device_err)?;
        let weights = be.stream.alloc_zeros::<f32>((tokens * r.top_k).max(1)).map_err(device_err)?;
        if tokens > 0 {
            let (lp, bp, ip, wp) = (
                be.ptr(&logits.buf),
                self.correction_bias.as_ref().map_or(0, |b| be.ptr(b)),
                be.ptr(&ids),
                be.ptr(&weights),
            );
            let (t, e, k, g, tg) =
                (tokens as i32, self.experts.len() as i32, r.top_k as i32, r.n_group as i32, r.topk_group as i32);
            let norm = r.norm_topk_prob as i32;
            let mut b = be.stream.launch_builder(&be.k.moe_route);
            b.arg(&lp).arg(&bp).arg(&t).arg(&e).arg(&k).arg(&g).arg(&tg).arg(&norm).arg(&r.routed_scaling_factor);
            b.arg(&ip).arg(&wp);
            let cfg = LaunchConfig {
                grid_dim: (tokens.div_ceil(64) as u32, 1, 1),
                block_dim: (64, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches kernels-cuda/moe.cu moe_route; limits checked at construction.
            unsafe { b.launch(cfg) }.map_err(device_err)?;
        }
        let mut y = match &self.shared {
            Some(shared) => shared.forward(be, x)?,
            None => CudaTensor {
                rows: x.rows,
                cols: x.cols,
                buf: be.stream.alloc_zeros::<f32>((x.rows * x.cols).max(1)).map_err(device_err)?,
            },
        };
        let pairs = tokens * r.top_k;
        if let Some(t) = self.fused.as_ref().filter(|_| pairs > 0 && (pairs <= FUSED_MAX_PAIRS || be.paths.grouped_moe))
        {
            // Every expert's gate|up takes its token's row: quantised once for all of them.
            let mut input = LinearInput::new(x, t.gate_up_input);
            if pairs <= FUSED_MAX_PAIRS {
                self.fused_experts(be, t, input.values(be)?, &ids, &weights, &mut y)?;
            } else {
                self.grouped_experts(be, t, &mut input, &ids, &weights, &mut y)?;
            }
            return Ok(y);
        }
        // Experts whose weights do not fit the device tables (or grouped-moe switched off): dispatch planned on the
        // host, each expert a GEMM over its rows.
        let ids = be.stream.clone_dtoh(&ids).map_err(device_err)?;
        let weights = be.stream.clone_dtoh(&weights).map_err(device_err)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut w: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for i in 0..tokens * r.top_k {
            let e = ids[i] as usize;
            rows[e].push((i / r.top_k) as u32);
            w[e].push(weights[i]);
        }
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let xe = be.gather(x, &rows[e])?;
            let out = expert.forward(be, &xe)?;
            be.scatter(&mut y, &rows[e], Some(&w[e]), &out)?;
        }
        Ok(y)
    }

    /// Many pairs: sorted by expert on the device, then grouped tensor-core GEMMs whose tiles each hold one
    /// expert's rows (kernels-cuda/moe.cu), and each token's experts summed into `y`. No host round trip.
    fn grouped_experts(
        &self,
        be: &CudaBackend,
        t: &ExpertTables,
        input: &mut LinearInput,
        ids: &CudaSlice<u32>,
        weights: &CudaSlice<f32>,
        y: &mut CudaTensor,
    ) -> Result<()> {
        let (tokens, top_k, experts) = (input.rows(), self.routing.top_k, self.experts.len());
        let pairs = tokens * top_k;
        let perm = be.stream.alloc_zeros::<u32>(pairs).map_err(device_err)?;
        let offsets = be.stream.alloc_zeros::<u32>(experts + 1).map_err(device_err)?;
        let tile_offsets = be.stream.alloc_zeros::<u32>(experts + 1).map_err(device_err)?;
        let (ip, pp, op, tp) = (be.ptr(ids), be.ptr(&perm), be.ptr(&offsets), be.ptr(&tile_offsets));
        let (pn, en) = (pairs as i32, experts as i32);
        let mut b = be.stream.launch_builder(&be.k.moe_align);
        b.arg(&ip).arg(&pn).arg(&en).arg(&pp).arg(&op).arg(&tp);
        let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches kernels-cuda/moe.cu moe_align; ids < experts <= MAX_EXPERTS (moe_route, checked at load).
        unsafe { b.launch(one_block) }.map_err(device_err)?;
        // Each expert's rows fill whole tiles except its last: at most this many tiles; blocks past the real count
        // return at once.
        let max_tiles = (pairs.div_ceil(TC_TILE) + experts.min(pairs)) as u32;
        let tile = |columns: usize| LaunchConfig {
            grid_dim: (columns.div_ceil(TC_TILE) as u32, max_tiles, 1),
            block_dim: (TC_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (k, h, i) = (top_k as i32, t.hidden as i32, t.inter as i32);
        let hbuf = be.alloc(pairs, t.inter)?;
        let hp = be.ptr(&hbuf.buf);
        let (gate, up, down) = (t.arg(be, 0), t.arg(be, 1), t.arg(be, 2));
        // FP8 weights and activations: the tensor-core tiles take the codes (both projections or neither).
        let fp8 = (be.paths.fp8_mma && t.dtype == WeightDtype::Fp8)
            .then(|| {
                let gate_up = fp8_mma_group(t.gate_up_input, t.hidden, t.tables[0].block[1])?;
                Some((gate_up, fp8_mma_group(t.down_input, t.inter, t.tables[2].block[1])?))
            })
            .flatten();
        if let Some((x_group, _)) = fp8 {
            let codes = input.codes(be, x_group)?;
            let (cp, sp, g) = (be.ptr(&codes.codes), be.ptr(&codes.scales), x_group as i32);
            let mut b = be.stream.launch_builder(&be.k.moe_gate_up_fp8x);
            b.arg(&cp).arg(&sp).arg(&g).arg(&pp).arg(&op).arg(&tp).arg(&en).arg(&k).arg(&h).arg(&i);
            b.arg(&gate).arg(&up).arg(&hp);
            // SAFETY: matches moe_gate_up_fp8x (conditions checked by fp8_mma_group); 32 gate and 32 up rows a tile.
            unsafe { b.launch(tile(2 * t.inter)) }.map_err(device_err)?;
        } else {
            let xp = be.ptr(&input.values(be)?.buf);
            let mut b = be.stream.launch_builder(&be.k.moe_gate_up_tc[t.dtype as usize]);
            b.arg(&xp).arg(&pp).arg(&op).arg(&tp).arg(&en).arg(&k).arg(&h).arg(&i).arg(&gate).arg(&up).arg(&hp);
            // SAFETY: matches moe_gate_up_tc_*; a tile's 64 columns are 32 gate and 32 up rows, hence 2 * inter.
            unsafe { b.launch(tile(2 * t.inter)) }.map_err(device_err)?;
        }
        let y_pair = be.alloc(pairs, t.hidden)?;
        let yp = be.ptr(&y_pair.buf);
        if let Some((_, h_group)) = fp8 {
            let mut h_input = LinearInput::new(&hbuf, t.down_input);
            let codes = h_input.codes(be, h_group)?;
            let (cp, sp, g) = (be.ptr(&codes.codes), be.ptr(&codes.scales), h_group as i32);
            let mut b = be.stream.launch_builder(&be.k.moe_down_fp8x);
            b.arg(&cp).arg(&sp).arg(&g).arg(&pp).arg(&op).arg(&tp).arg(&en).arg(&h).arg(&i).arg(&down).arg(&yp);
            // SAFETY: matches moe_down_fp8x; the codes are hbuf's rows (sorted order), y_pair is [pairs, hidden].
            unsafe { b.launch(tile(t.hidden)) }.map_err(device_err)?;
        } else {
            if t.down_input != InputQuant::Exact {
                quantize_rows(be, &hbuf, t.down_input, &hbuf)?;
            }
            let mut b = be.stream.launch_builder(&be.k.moe_down_tc[t.dtype as usize]);
            b.arg(&hp).arg(&pp).arg(&op).arg(&tp).arg(&en).arg(&h).arg(&i).arg(&down).arg(&yp);
            // SAFETY: matches moe_down_tc_*; y_pair is [pairs, hidden].
            unsafe { b.launch(tile(t.hidden)) }.map_err(device_err)?;
        }
        let (wp, outp, tn) = (be.ptr(weights), be.ptr(&y.buf), tokens as i32);
        let mut b = be.stream.launch_builder(&be.k.moe_combine);
        b.arg(&yp).arg(&wp).arg(&tn).arg(&k).arg(&h).arg(&outp);
        let blocks = (tokens * t.hidden).div_ceil(256).clamp(1, 4096) as u32;
        // SAFETY: matches moe_combine; y is [tokens, hidden].
        unsafe { b.launch(LaunchConfig { grid_dim: (blocks, 1, 1), ..be.launch_rows(1) }) }.map_err(device_err)?;
        Ok(())
    }

    /// All chosen experts of all tokens in three launches, no host round trip: gate|up rows per (token, expert),
    /// SwiGLU, then down rows summed over each token's experts into `y`.
    fn fused_experts(
        &self,
        be: &CudaBackend,
        t: &ExpertTables,
        x: &CudaTensor,
        ids: &CudaSlice<u32>,
        weights: &CudaSlice<f32>,
        y: &mut CudaTensor,
    ) -> Result<()> {
        let (tokens, top_k) = (x.rows, self.routing.top_k);
        let pairs = tokens * top_k;
        let gu = be.alloc(pairs, 2 * t.inter)?;
        let (xp, ip, gp) = (be.ptr(&x.buf), be.ptr(ids), be.ptr(&gu.buf));
        let (k, pn, h, i) = (top_k as i32, pairs as i32, t.hidden as i32, t.inter as i32);
        let (gate, up, down) = (t.arg(be, 0), t.arg(be, 1), t.arg(be, 2));
        let gate_up_kernel = be.row_kernel(RowOp::ExpertGateUp, t.dtype, t.hidden);
        let mut b = be.stream.launch_builder(gate_up_kernel.unwrap_or(&be.k.moe_gate_up[t.dtype as usize]));
        b.arg(&xp).arg(&ip).arg(&k).arg(&pn).arg(&h).arg(&i).arg(&gate).arg(&up).arg(&gp);
        let cfg = LaunchConfig { grid_dim: ((2 * t.inter).div_ceil(8) as u32, pairs as u32, 1), ..be.launch_rows(1) };
        // SAFETY: matches kernels-cuda/moe.cu moe_gate_up_*; expert ids come from moe_route (< n_experts).
        unsafe { b.launch(cfg) }.map_err(device_err)?;
        let hbuf = be.alloc(pairs, t.inter)?;
        let (hp, rows) = (be.ptr(&hbuf.buf), pairs as i32);
        let mut b = be.stream.launch_builder(&be.k.swiglu);
        b.arg(&gp).arg(&rows).arg(&i).arg(&hp);
        let blocks = (pairs * t.inter).div_ceil(256).clamp(1, 4096) as u32;
        // SAFETY: matches kernels-cuda/elementwise.cu swiglu.
        unsafe { b.launch(LaunchConfig { grid_dim: (blocks, 1, 1), ..be.launch_rows(1) }) }.map_err(device_err)?;
        if t.down_input != InputQuant::Exact {
            quantize_rows(be, &hbuf, t.down_input, &hbuf)?;
        }
        let (wp, yp, tn) = (be.ptr(weights), be.ptr(&y.buf), tokens as i32);
        let down_kernel = be.row_kernel(RowOp::ExpertDown, t.dtype, t.inter);
        let mut b = be.stream.launch_builder(down_kernel.unwrap_or(&be.k.moe_down[t.dtype as usize]));
        b.arg(&hp).arg(&ip).arg(&wp).arg(&k).arg(&tn).arg(&h).arg(&i).arg(&down).arg(&yp);
        let cfg = LaunchConfig { grid_dim: (t.hidden.div_ceil(8) as u32, tokens as u32, 1), ..be.launch_rows(1) };
        // SAFETY: matches kernels-cuda/moe.cu moe_down_*; y is [tokens, hidden].
        unsafe { b.launch(cfg) }.map_err(device_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_k_fills_the_device_only_where_tiles_are_few() {
        // GLM-4.5V at a decode batch of 16 on a 132-multiprocessor H100/H200: qkv (224 tiles, K 4096), o_proj (64
        // tiles, K 12288), down_proj of the shared expert (64 tiles, K 1408), the router (2 tiles, K 4096).
        assert_eq!(k_splits(224, 4096, 132), (2, 2048));
        assert_eq!(k_splits(64, 12288, 132), (5, 2464));
        assert_eq!(k_splits(64, 1408, 132), (5, 288));
        assert_eq!(k_splits(2, 4096, 132), (8, 512));
        // Enough tiles already (lm_head; a 2,048-token prefill chunk), or K too short to split: one pass.
        assert_eq!(k_splits(2368, 4096, 132), (1, 0));
        assert_eq!(k_splits(32 * 224, 4096, 132), (1, 0));
        assert_eq!(k_splits(4, 300, 132), (1, 0));
        // Every split is a whole number of 32-column steps and together they cover K exactly once.
        for (tiles, k) in [(1, 4096), (3, 1000), (10, 13696), (64, 544)] {
            let (splits, k_split) = k_splits(tiles, k, 132);
            if splits > 1 {
                assert!(k_split % 32 == 0 && (splits - 1) * k_split < k && splits * k_split >= k, "{tiles} {k}");
            }
        }
    }
}
