//! The CUDA backend: kernels compiled ahead of time (runtime/build.rs, `kernels-cuda/`), loaded through the driver
//! API at run time (cudarc, dynamically loaded, so a machine without a driver still starts and uses the CPU).
//!
//! f32 activations, weights kept in their checkpoint dtype on the device (BF16/F16/F32, FP8 with per-channel or block
//! scales) and converted in the GEMMs (tensor cores for many rows, GEMVs for decode rows); attention, MoE routing and
//! dispatch, and token choice on the device; decode steps recorded as CUDA graphs (graphs.rs). Kernel families that
//! have a generic fallback can be switched off one by one (paths.rs) to find where a parity failure comes from.
mod batch;
mod fp8_inputs;
mod graphs;
mod kernels;
mod paths;
pub use batch::CudaBatch;
use batch::Keys;
use kernels::WeightDtype;
pub use kernels::{Kernels, KERNEL_IMAGES};
pub use paths::{KernelPaths, GENERIC_ENV};
mod linear;

use std::{ops::Range, sync::Arc};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};

pub use linear::{CudaExperts, CudaLinear, CudaMlp};

use super::{
    AttentionShape, Backend, DecoderLayers, ExpertsSource, ForwardBatch, KvCacheSpec, KvDtype, MlpSource, Rope,
};
use crate::{
    config::RopeLayout,
    engine::sampler::Draw,
    weights::{dummy::Fill, HostTensor, LinearSource, MappedBytes},
    Error, Result,
};

pub(crate) fn device_err(e: cudarc::driver::DriverError) -> Error {
    Error::Device(e.to_string())
}

/// A row-major [rows, cols] f32 matrix in device memory.
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    buf: CudaSlice<f32>,
}

/// Per layer, K and V as [slots, kv_heads, head_dim] of the spec's dtype, and for FP8 one f32 scale per
/// (slot, kv head).
pub struct CudaKvCache {
    spec: KvCacheSpec,
    k: Vec<CudaSlice<u8>>,
    v: Vec<CudaSlice<u8>>,
    k_scale: Vec<CudaSlice<f32>>,
    v_scale: Vec<CudaSlice<f32>>,
    /// Decode steps recorded over this cache, and the buffers they read.
    graphs: graphs::DecodeGraphs,
}

impl CudaKvCache {
    /// Decode-step recordings held (graphs.rs).
    pub fn recorded_graphs(&self) -> usize {
        self.graphs.recorded()
    }
}

/// The KV_* codes of kernels-cuda/common.cuh.
fn kv_code(dtype: KvDtype) -> i32 {
    match dtype {
        KvDtype::F32 => 0,
        KvDtype::Bf16 => 1,
        KvDtype::Fp8E4m3 => 2,
    }
}

/// Where a cache layer lives, for the kernels: K, V, their FP8 scales, and the element type.
#[derive(Clone, Copy)]
struct CacheLayer {
    k: u64,
    v: u64,
    k_scale: u64,
    v_scale: u64,
    dtype: KvDtype,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    paths: KernelPaths,
    /// The largest decode step (rows) recorded as a graph (`--cuda-graph-max-bs`).
    graph_max_rows: usize,
    /// Streaming multiprocessors: how many blocks a launch needs to fill the device.
    sm_count: usize,
    /// Fill every fresh activation with NaN, so that a kernel that leaves part of its output unwritten fails the
    /// parity tests instead of passing on leftover memory.
    poison: bool,
}

/// kernels-cuda/attention.cu: warps per block and the largest head the kernel holds in registers.
const ATTENTION_WARPS: u32 = 4;
const MAX_HEAD_DIM: usize = 32 * 8;

/// The `Rope` struct of kernels-cuda/attention.cu, passed by value.
const ROPE_MAX_FREQS: usize = 128;
#[repr(C)]
#[derive(Clone, Copy)]
struct RopeArg {
    inv_freq: [f32; ROPE_MAX_FREQS],
    axis: [u8; ROPE_MAX_FREQS],
    rot_dim: i32,
    interleaved: i32,
}

impl RopeArg {
    fn new(rope: &Rope) -> Result<Self> {
        let n = rope.inv_freq.len();
        if n > ROPE_MAX_FREQS || rope.axis.len() < n || rope.axis.iter().any(|&a| a > 2) || rope.rot_dim > 2 * n {
            return Err(Error::InvalidInput(format!(
                "a rotary embedding of {n} frequencies (rot_dim {}) is beyond the CUDA kernel's {ROPE_MAX_FREQS}",
                rope.rot_dim
            )));
        }
        let mut arg = RopeArg {
            inv_freq: [0.0; ROPE_MAX_FREQS],
            axis: [0; ROPE_MAX_FREQS],
            rot_dim: rope.rot_dim as i32,
            interleaved: (rope.layout == RopeLayout::InterleavedPairs) as i32,
        };
        arg.inv_freq[..n].copy_from_slice(&rope.inv_freq);
        arg.axis[..n].copy_from_slice(&rope.axis[..n]);
        Ok(arg)
    }
}
unsafe impl cudarc::driver::DeviceRepr for RopeArg {}

impl CudaBackend {
    /// Opens device `ordinal` with the kernel families `GLMV_CUDA_GENERIC` leaves on. Fails (never panics) when there
    /// is no driver, no device, no kernels built in, or the variable names an unknown family.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_paths(ordinal, KernelPaths::from_env()?)
    }

    /// Opens device `ordinal` using these kernel families.
    pub fn with_paths(ordinal: usize, paths: KernelPaths) -> Result<Self> {
        // SAFETY: only probes whether libcuda can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Device("no CUDA driver (libcuda.so) on this machine".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(device_err)?;
        // One stream orders everything; per-slice events would only add launch overhead.
        // SAFETY: no other stream of this context touches our buffers.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(device_err)?;
        keep_freed_memory(&ctx)?;
        let k = Kernels::load(&ctx)?;
        let mut paths = paths;
        // Graphs need stream-ordered allocation (every activation is allocated inside the recorded step).
        paths.cuda_graphs &= ctx.has_async_alloc();
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(device_err)? as usize;
        Ok(CudaBackend {
            ctx,
            stream,
            k,
            paths,
            graph_max_rows: crate::config::plan::DECODE_GRAPH_ROWS,
            sm_count,
            poison: false,
        })
    }

    /// A backend whose fresh activations are NaN-filled (for tests).
    pub fn new_poisoned(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend { poison: true, ..Self::new(ordinal)? })
    }

    /// The kernel families in use.
    pub fn kernel_paths(&self) -> KernelPaths {
        self.paths
    }

    /// Records decode steps of at most `rows` rows as CUDA graphs (0: none), as SGLang's `--cuda-graph-max-bs`.
    pub fn set_graph_max_rows(&mut self, rows: usize) {
        self.graph_max_rows = rows;
    }

    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown CUDA device".into())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(device_err)
    }

    /// The specialised row kernel for this operation, dtype and width, when built and not switched off.
    fn row_kernel(&self, op: glmv_codegen::RowOp, dtype: WeightDtype, width: usize) -> Option<&CudaFunction> {
        self.k.row_kernel(op, dtype, width).filter(|_| self.paths.row_kernels)
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor { rows, cols, buf: self.alloc_slice::<f32>(rows * cols)? })
    }

    /// `n` (at least one) elements for a kernel to fill, poisoned (all bytes 0xff: NaN as f32 and as FP8) in tests.
    fn alloc_slice<T: cudarc::driver::DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every kernel that gets a fresh buffer writes all of it.
        let buf = unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(device_err)?;
        if self.poison {
            // SAFETY: the range is the allocation just made, on its own stream.
            unsafe {
                cudarc::driver::result::memset_d8_async(self.ptr(&buf), 0xff, buf.num_bytes(), self.stream.cu_stream())
            }
            .map_err(device_err)?;
        }
        Ok(buf)
    }

    fn upload_slice<T: cudarc::driver::DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return unsafe { self.stream.alloc::<T>(1) }.map_err(device_err);
        }
        self.stream.clone_htod(data).map_err(device_err)
    }

    /// A weight's bytes on the device. A dummy tensor's random values are made there (`dummy_fill`, the same bytes
    /// the host would make): one write pass over device memory instead of making GLM-4.5V-FP8's 108 GB on the host's
    /// cores and copying them over PCIe.
    fn upload_weight(&self, bytes: &MappedBytes) -> Result<CudaSlice<u8>> {
        let Some(recipe) = bytes.recipe() else { return self.upload_slice(bytes) };
        let kind = match recipe.fill {
            Fill::Fp8Codes => (0i32, 0f32),
            Fill::Bf16Uniform(a) => (1, a),
            Fill::F32Uniform(a) => (2, a),
            // Constants (norms, scales) are small and read on the host anyway.
            Fill::Bf16Ones | Fill::F32Const(_) => return self.upload_slice(bytes),
        };
        let (seed, n) = (recipe.seed, bytes.len());
        let out = self.alloc_slice::<u8>(n)?;
        let op = self.ptr(&out);
        let mut b = self.stream.launch_builder(&self.k.dummy_fill);
        b.arg(&op).arg(&n).arg(&seed).arg(&kind.0).arg(&kind.1);
        // One thread per random word; the kernel strides over the rest.
        let words = n.div_ceil(recipe.fill.word_bytes());
        let cfg =
            LaunchConfig { grid_dim: (words.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1), ..self.launch_rows(1) };
        // SAFETY: matches kernels-cuda/elementwise.cu dummy_fill, which writes the n bytes of `out`.
        unsafe { b.launch(cfg) }.map_err(device_err)?;
        Ok(out)
    }

    fn launch_rows(&self, rows: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    /// Rotated q and k of every row ([rows, q_width], [rows, kv_width]) at `positions` ([rows, 3] on the device);
    /// with `cache`, k and v also go to its slots ([rows] on the device).
    fn rope_qkv(
        &self,
        qkv: &CudaTensor,
        shape: &AttentionShape,
        rope: &Rope,
        positions: u64,
        cache: Option<(CacheLayer, u64)>,
    ) -> Result<(CudaTensor, CudaTensor)> {
        let rows = qkv.rows;
        let q = self.alloc(rows, shape.q_width())?;
        let k = self.alloc(rows, shape.kv_width())?;
        let rope_arg = RopeArg::new(rope)?;
        let (kc, vc, ks, vs, dt, slots_ptr) =
            cache.map_or((0, 0, 0, 0, 0, 0), |(l, slots)| (l.k, l.v, l.k_scale, l.v_scale, kv_code(l.dtype), slots));
        let (heads, kv_heads, d) = (shape.num_heads as i32, shape.num_kv_heads as i32, shape.head_dim as i32);
        let (qkv_p, pos_p, q_p, k_p) = (self.ptr(&qkv.buf), positions, self.ptr(&q.buf), self.ptr(&k.buf));
        let mut b = self.stream.launch_builder(&self.k.rope_qkv);
        b.arg(&qkv_p).arg(&pos_p).arg(&rope_arg).arg(&heads).arg(&kv_heads).arg(&d).arg(&q_p).arg(&k_p);
        b.arg(&kc).arg(&vc).arg(&ks).arg(&vs).arg(&dt).arg(&slots_ptr);
        // SAFETY: argument list matches kernels-cuda/attention.cu rope_qkv; buffers sized above.
        unsafe { b.launch(self.launch_rows(rows)) }.map_err(device_err)?;
        Ok((q, k))
    }

    /// Attention of each row over its keys (see kernels-cuda/attention.cu `attention`).
    fn attend(
        &self,
        q: &CudaTensor,
        shape: &AttentionShape,
        kv: CacheLayer,
        (k_stride, v_stride): (usize, usize),
        keys: &Keys,
    ) -> Result<CudaTensor> {
        let out = self.alloc(q.rows, shape.q_width())?;
        if q.rows == 0 {
            return Ok(out);
        }
        let (heads, kv_heads, ks, vs) =
            (shape.num_heads as i32, shape.num_kv_heads as i32, k_stride as i32, v_stride as i32);
        let (qp, bp, cp, outp) = (self.ptr(&q.buf), keys.begin, keys.count, self.ptr(&out.buf));
        let (tp, op, block_size) = (keys.table, keys.offsets, keys.block_size);
        let (tensor_core_kernel, gqa_kernel) = match kv.dtype {
            KvDtype::Bf16 => (&self.k.attention_tc_bf16_d128, &self.k.attention_gqa_tc_bf16_d128),
            KvDtype::Fp8E4m3 => (&self.k.attention_tc_fp8_d128, &self.k.attention_gqa_tc_fp8_d128),
            KvDtype::F32 => (&self.k.attention_tc_f32_d128, &self.k.attention_gqa_tc_f32_d128),
        };
        // The tensor-core kernels read 8 values of a head at a time: rows must start at multiples of 8 values of
        // 16-byte aligned bases, and hold heads of 128.
        let tensor_cores = shape.head_dim == 128
            && [kv.k, kv.v].iter().all(|p| p.is_multiple_of(16))
            && [k_stride, v_stride].iter().all(|s| s.is_multiple_of(8));
        // The tensor-core kernels' arguments that a launch does not use: no row tiles (GQA), no key splits (prefill).
        let (no_tiles, no_split) = ((0u64, 0u64), (0i32, 0u64));
        if let Some((r0p, rnp, tiles)) = keys.tiles.filter(|_| self.paths.prefill_attention && tensor_cores) {
            let mut b = self.stream.launch_builder(tensor_core_kernel);
            b.arg(&qp).arg(&heads).arg(&kv_heads).arg(&shape.scale).arg(&kv.k).arg(&ks).arg(&kv.v).arg(&vs);
            b.arg(&kv.k_scale).arg(&kv.v_scale);
            b.arg(&bp).arg(&cp).arg(&tp).arg(&op).arg(&block_size).arg(&r0p).arg(&rnp);
            b.arg(&no_split.0).arg(&no_split.1).arg(&outp);
            let cfg = LaunchConfig {
                grid_dim: (tiles as u32, shape.num_heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches kernels-cuda/attention_tc.cu ATTENTION_TC_KERNEL; cache rows of kv_heads x 128 values
            // (16- or 8-byte aligned), FP8 scales per (slot, kv head), every tile's rows share one sequence
            // (query_tiles), key indices checked by the callers.
            unsafe { b.launch(cfg) }.map_err(device_err)?;
            return Ok(out);
        }
        let d = shape.head_dim;
        if d > MAX_HEAD_DIM {
            return Err(Error::InvalidInput(format!(
                "head_dim {d} exceeds the CUDA attention kernel's {MAX_HEAD_DIM}"
            )));
        }
        // Few (row, head) blocks and long contexts: split the keys, then merge the splits. (A recorded decode step's
        // batch rounds `longest` so that this count is its recording's.)
        let few_blocks = q.rows * shape.num_heads < SPLIT_BELOW_BLOCKS;
        let splits = if self.paths.split_keys && few_blocks { keys.longest.div_ceil(KEYS_PER_SPLIT).max(1) } else { 1 };
        let partial = if splits > 1 {
            Some(self.stream.alloc_zeros::<f32>(q.rows * shape.num_heads * splits * (d + 2)).map_err(device_err)?)
        } else {
            None
        };
        let (pp, per_split) = (partial.as_ref().map_or(0, |p| self.ptr(p)), KEYS_PER_SPLIT as i32);
        let group = shape.num_heads / shape.num_kv_heads.max(1);
        let gqa = self.paths.gqa_attention
            && tensor_cores
            && shape.num_heads.is_multiple_of(shape.num_kv_heads.max(1))
            && (2..=ATTENTION_TILE_ROWS).contains(&group);
        if gqa {
            // One block per (row, kv head, split): the kv head's query heads share each key and value.
            let mut b = self.stream.launch_builder(gqa_kernel);
            b.arg(&qp).arg(&heads).arg(&kv_heads).arg(&shape.scale).arg(&kv.k).arg(&ks).arg(&kv.v).arg(&vs);
            b.arg(&kv.k_scale).arg(&kv.v_scale);
            b.arg(&bp).arg(&cp).arg(&tp).arg(&op).arg(&block_size).arg(&no_tiles.0).arg(&no_tiles.1);
            b.arg(&per_split).arg(&pp).arg(&outp);
            let cfg = LaunchConfig {
                grid_dim: (q.rows as u32, shape.num_kv_heads as u32, splits as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches kernels-cuda/attention_tc.cu ATTENTION_TC_KERNEL (GQA: heads / kv_heads rows per tile,
            // at most ATTENTION_TILE_ROWS, checked above); alignment as above; with splits, partial holds (d + 2) floats per (row, head,
            // split).
            unsafe { b.launch(cfg) }.map_err(device_err)?;
        } else {
            let cfg = LaunchConfig {
                grid_dim: (q.rows as u32, shape.num_heads as u32, splits as u32),
                block_dim: (32 * ATTENTION_WARPS, 1, 1),
                shared_mem_bytes: 0,
            };
            let di = d as i32;
            let kernel_kv = match kv.dtype {
                KvDtype::F32 => glmv_codegen::KvDtype::F32,
                KvDtype::Bf16 => glmv_codegen::KvDtype::Bf16,
                KvDtype::Fp8E4m3 => glmv_codegen::KvDtype::Fp8,
            };
            let kernel = if self.paths.specialised_attention {
                self.k.attention_for(kernel_kv, shape.num_heads, shape.num_kv_heads, d)
            } else {
                self.k.attention_generic(kernel_kv)
            };
            let mut b = self.stream.launch_builder(kernel);
            b.arg(&qp).arg(&heads).arg(&kv_heads).arg(&di).arg(&shape.scale);
            b.arg(&kv.k).arg(&ks).arg(&kv.v).arg(&vs).arg(&kv.k_scale).arg(&kv.v_scale);
            b.arg(&bp).arg(&cp).arg(&tp).arg(&op).arg(&block_size).arg(&per_split).arg(&pp).arg(&outp);
            // SAFETY: argument list matches kernels-cuda/attention.cuh ATTENTION_KERNEL; every key index is inside k
            // and v (checked by the callers); with splits, partial holds (d + 2) floats per (row, head, split).
            unsafe { b.launch(cfg) }.map_err(device_err)?;
        }
        if splits > 1 {
            let (sn, di) = (splits as i32, d as i32);
            let mut b = self.stream.launch_builder(&self.k.attention_combine);
            b.arg(&pp).arg(&heads).arg(&di).arg(&sn).arg(&outp);
            let cfg = LaunchConfig { grid_dim: (q.rows as u32, shape.num_heads as u32, 1), ..self.launch_rows(1) };
            // SAFETY: matches kernels-cuda/attention.cu attention_combine over the partial buffer written above.
            unsafe { b.launch(cfg) }.map_err(device_err)?;
        }
        Ok(out)
    }
}

/// Keys per split of the decode attention kernels, and the (row, head) blocks below which they split them: a batch of
/// a few decode rows has too few blocks to fill the GPU (GLM-4.5V at batch 1: 96), and each walks its whole
/// context.
const KEYS_PER_SPLIT: usize = 256;
const SPLIT_BELOW_BLOCKS: usize = 1024;

/// Query rows per tile of the tensor-core attention kernels (FA_ROWS in kernels-cuda/attention_tc.cu: a prefill
/// tile's rows of one sequence, or a GQA tile's query heads of one kv head), and the rows a sequence needs in one step
/// before its attention runs in prefill tiles (fewer, as decode rows, take the GQA tiles or the generic kernel).
const ATTENTION_TILE_ROWS: usize = 64;
const PREFILL_TILE_MIN_ROWS: u32 = 16;

/// Keeps memory freed to the stream-ordered pool for the next allocation instead of returning it to the driver at
/// every synchronisation (the pool's default), which would map and unmap activations each step.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    // SAFETY: the device comes from the context; the attribute takes a u64.
    unsafe {
        let pool = cudarc::driver::result::device::get_default_mem_pool(ctx.cu_device()).map_err(device_err)?;
        let mut threshold = u64::MAX;
        cudarc::driver::result::mem_pool::set_attribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(device_err)
    }
}

fn check_width(x: &CudaTensor, w: &CudaSlice<f32>) -> Result<()> {
    if x.cols != w.len() {
        return Err(Error::InvalidInput(format!("norm of width {} applied to {} features", w.len(), x.cols)));
    }
    Ok(())
}

fn same_shape(a: &CudaTensor, b: &CudaTensor) -> Result<()> {
    if a.rows != b.rows || a.cols != b.cols {
        return Err(Error::InvalidInput(format!(
            "shapes [{}, {}] and [{}, {}] differ",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    Ok(())
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Vector = CudaSlice<f32>;
    type Linear = CudaLinear;
    type Mlp = CudaMlp;
    type Experts = CudaExperts;
    type KvCache = CudaKvCache;
    type Batch = CudaBatch;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(device_err)?;
        cudarc::driver::result::mem_get_info().map_err(device_err)
    }

    fn vector(&self, t: &HostTensor) -> Result<CudaSlice<f32>> {
        self.upload_slice(&t.to_f32_vec()?)
    }

    fn linear(&self, parts: &[LinearSource]) -> Result<CudaLinear> {
        CudaLinear::new(self, parts)
    }

    fn mlp(&self, src: &MlpSource) -> Result<CudaMlp> {
        CudaMlp::new(self, src)
    }

    fn experts(&self, src: &ExpertsSource) -> Result<CudaExperts> {
        CudaExperts::new(self, src)
    }

    fn kv_cache(&self, spec: &KvCacheSpec) -> Result<CudaKvCache> {
        let slots = spec.num_blocks * spec.block_size;
        let bytes = (slots * spec.num_kv_heads * spec.head_dim * spec.dtype.element_bytes()).max(1);
        let scales = if spec.dtype == KvDtype::Fp8E4m3 { slots * spec.num_kv_heads } else { 0 }.max(1);
        let mut cache = CudaKvCache {
            spec: *spec,
            k: vec![],
            v: vec![],
            k_scale: vec![],
            v_scale: vec![],
            graphs: Default::default(),
        };
        for _ in 0..spec.num_layers {
            cache.k.push(self.stream.alloc_zeros::<u8>(bytes).map_err(device_err)?);
            cache.v.push(self.stream.alloc_zeros::<u8>(bytes).map_err(device_err)?);
            cache.k_scale.push(self.stream.alloc_zeros::<f32>(scales).map_err(device_err)?);
            cache.v_scale.push(self.stream.alloc_zeros::<f32>(scales).map_err(device_err)?);
        }
        Ok(cache)
    }

    fn batch(&self, batch: &ForwardBatch, cache: &mut CudaKvCache) -> Result<CudaBatch> {
        self.prepare_batch(batch, cache)
    }

    fn embed(&self, table: &CudaLinear, ids: &[u32]) -> Result<CudaTensor> {
        table.embed(self, ids)
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaSlice<f32>, eps: f32) -> Result<CudaTensor> {
        check_width(x, w)?;
        let out = self.alloc(x.rows, x.cols)?;
        let (xp, op, wp, null, cols) = (self.ptr(&x.buf), self.ptr(&out.buf), self.ptr(w), 0u64, x.cols as i32);
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(&xp).arg(&null).arg(&wp).arg(&eps).arg(&cols).arg(&op);
        // SAFETY: matches kernels-cuda/elementwise.cu rms_norm.
        unsafe { b.launch(self.launch_rows(x.rows)) }.map_err(device_err)?;
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        delta: &CudaTensor,
        w: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<CudaTensor> {
        check_width(residual, w)?;
        same_shape(residual, delta)?;
        let out = self.alloc(residual.rows, residual.cols)?;
        let (dp, rp, wp, op) = (self.ptr(&delta.buf), self.ptr(&residual.buf), self.ptr(w), self.ptr(&out.buf));
        let cols = residual.cols as i32;
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(&dp).arg(&rp).arg(&wp).arg(&eps).arg(&cols).arg(&op);
        // SAFETY: matches kernels-cuda/elementwise.cu rms_norm (residual form).
        unsafe { b.launch(self.launch_rows(residual.rows)) }.map_err(device_err)?;
        Ok(out)
    }

    fn linear_forward(&self, x: &CudaTensor, w: &CudaLinear) -> Result<CudaTensor> {
        w.forward(self, x)
    }

    fn mlp_forward(&self, x: &CudaTensor, mlp: &CudaMlp) -> Result<CudaTensor> {
        mlp.forward(self, x)
    }

    fn moe_forward(&self, x: &CudaTensor, experts: &CudaExperts) -> Result<CudaTensor> {
        experts.forward(self, x)
    }

    fn attention(
        &self,
        qkv: &CudaTensor,
        shape: &AttentionShape,
        rope: &Rope,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<CudaTensor> {
        let spec = cache.spec;
        if layer >= spec.num_layers || shape.num_kv_heads != spec.num_kv_heads || shape.head_dim != spec.head_dim {
            return Err(Error::KvCache(format!("layer {layer} or head shape does not match the cache {spec:?}")));
        }
        // A decode step laid out for a graph has its bucket's rows, the batch's own first: outside run_decoder it runs
        // over those alone.
        if (qkv.rows != batch.rows && qkv.rows != batch.real_rows) || qkv.cols != shape.q_width() + 2 * shape.kv_width()
        {
            return Err(Error::InvalidInput("attention input does not match the batch".into()));
        }
        let layer = CacheLayer {
            k: self.ptr(&cache.k[layer]),
            v: self.ptr(&cache.v[layer]),
            k_scale: self.ptr(&cache.k_scale[layer]),
            v_scale: self.ptr(&cache.v_scale[layer]),
            dtype: spec.dtype,
        };
        let (q, _k) = self.rope_qkv(qkv, shape, rope, batch.positions, Some((layer, batch.slots)))?;
        let kvw = shape.kv_width();
        self.attend(&q, shape, layer, (kvw, kvw), &batch.keys)
    }

    fn run_decoder(
        &self,
        hidden: CudaTensor,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layers: &mut DecoderLayers<'_, Self>,
    ) -> Result<CudaTensor> {
        self.run_graph_step(hidden, batch, cache, layers)
    }

    fn decode_rows_to_record(&self) -> Vec<usize> {
        batch::GRAPH_BUCKETS.into_iter().filter(|&rows| rows <= self.graph_max_rows()).collect()
    }

    fn segment_attention(
        &self,
        qkv: &CudaTensor,
        shape: &AttentionShape,
        rope: &Rope,
        positions: &[[u32; 3]],
        segments: &[Range<usize>],
    ) -> Result<CudaTensor> {
        let covered = segments.iter().try_fold(0, |next, s| (s.start == next && s.end >= s.start).then_some(s.end));
        if qkv.cols != shape.q_width() + 2 * shape.kv_width()
            || positions.len() != qkv.rows
            || covered != Some(qkv.rows)
        {
            return Err(Error::InvalidInput(format!("segment attention: bad input for segments {segments:?}")));
        }
        let mut owned = Vec::new();
        let flat: Vec<u32> = positions.iter().flatten().copied().collect();
        let positions = self.keep(&mut owned, &flat)?;
        let (q, k) = self.rope_qkv(qkv, shape, rope, positions, None)?;
        let (mut begin, mut count) = (vec![0u32; qkv.rows], vec![0u32; qkv.rows]);
        for s in segments {
            for r in s.clone() {
                begin[r] = s.start as u32;
                count[r] = s.len() as u32;
            }
        }
        let keys = Keys {
            begin: self.keep(&mut owned, &begin)?,
            count: self.keep(&mut owned, &count)?,
            table: 0,
            offsets: 0,
            block_size: 1,
            longest: segments.iter().map(|s| s.len()).max().unwrap_or(0),
            tiles: self.upload_tiles(&begin, None, &mut owned)?,
        };
        let contiguous = CacheLayer {
            k: self.ptr(&k.buf),
            v: self.ptr(&qkv.buf) + ((shape.q_width() + shape.kv_width()) * 4) as u64,
            k_scale: 0,
            v_scale: 0,
            dtype: KvDtype::F32,
        };
        self.attend(&q, shape, contiguous, (shape.kv_width(), qkv.cols), &keys)
    }

    fn add(&self, x: &mut CudaTensor, delta: &CudaTensor) -> Result<()> {
        same_shape(x, delta)?;
        let n = x.rows * x.cols;
        let (xp, dp) = (self.ptr(&x.buf), self.ptr(&delta.buf));
        let mut b = self.stream.launch_builder(&self.k.add_inplace);
        b.arg(&xp).arg(&dp).arg(&n);
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, 4096) as u32, 1, 1), ..self.launch_rows(1) };
        // SAFETY: matches kernels-cuda/elementwise.cu add_inplace.
        unsafe { b.launch(cfg) }.map_err(device_err)?;
        Ok(())
    }

    fn layer_norm_gelu(
        &self,
        x: &CudaTensor,
        weight: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<CudaTensor> {
        check_width(x, weight)?;
        check_width(x, bias)?;
        let out = self.alloc(x.rows, x.cols)?;
        let (xp, wp, bp, op, cols) =
            (self.ptr(&x.buf), self.ptr(weight), self.ptr(bias), self.ptr(&out.buf), x.cols as i32);
        let mut b = self.stream.launch_builder(&self.k.layer_norm_gelu);
        b.arg(&xp).arg(&wp).arg(&bp).arg(&eps).arg(&cols).arg(&op);
        // SAFETY: matches kernels-cuda/elementwise.cu layer_norm_gelu.
        unsafe { b.launch(self.launch_rows(x.rows)) }.map_err(device_err)?;
        Ok(out)
    }

    fn merge_windows(&self, x: &CudaTensor, window: usize) -> Result<CudaTensor> {
        if window == 0 || !x.rows.is_multiple_of(window) {
            return Err(Error::InvalidInput(format!("{} rows do not form windows of {window}", x.rows)));
        }
        let out = self.alloc(x.rows / window, x.cols * window)?;
        let (xp, op, w, cols) = (self.ptr(&x.buf), self.ptr(&out.buf), window as i32, x.cols as i32);
        let mut b = self.stream.launch_builder(&self.k.merge_windows);
        b.arg(&xp).arg(&w).arg(&cols).arg(&op);
        // SAFETY: matches kernels-cuda/elementwise.cu merge_windows.
        unsafe { b.launch(self.launch_rows(out.rows)) }.map_err(device_err)?;
        Ok(out)
    }

    fn select_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(Error::InvalidInput(format!("row {bad} of a {}-row tensor", x.rows)));
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        self.gather(x, &idx)
    }

    fn scatter_rows(&self, dst: &mut CudaTensor, rows: &[usize], src: &CudaTensor) -> Result<()> {
        if src.cols != dst.cols || src.rows != rows.len() || rows.iter().any(|&r| r >= dst.rows) {
            return Err(Error::InvalidInput("scatter rows do not fit the destination".into()));
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        self.scatter(dst, &idx, None, src)
    }

    fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CudaTensor> {
        if data.len() != rows * cols {
            return Err(Error::InvalidInput(format!("{} values for a [{rows}, {cols}] tensor", data.len())));
        }
        Ok(CudaTensor { rows, cols, buf: self.upload_slice(data)? })
    }

    fn to_host(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        let mut v = self.stream.clone_dtoh(&x.buf).map_err(device_err)?;
        v.truncate(x.rows * x.cols);
        Ok(v)
    }

    fn argmax_rows(&self, x: &CudaTensor) -> Result<Vec<u32>> {
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        if !self.paths.device_argmax {
            let host = self.to_host(x)?;
            return Ok(host.chunks(x.cols).map(crate::engine::sampler::argmax).collect());
        }
        let out = self.stream.alloc_zeros::<u32>(x.rows).map_err(device_err)?;
        let (xp, cols, op) = (self.ptr(&x.buf), x.cols as i32, self.ptr(&out));
        let mut b = self.stream.launch_builder(&self.k.argmax_rows);
        b.arg(&xp).arg(&cols).arg(&op);
        let cfg = LaunchConfig { grid_dim: (x.rows as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches kernels-cuda/sampling.cu argmax_rows; x is [rows, cols], out has one u32 per row.
        unsafe { b.launch(cfg) }.map_err(device_err)?;
        self.stream.clone_dtoh(&out).map_err(device_err)
    }

    fn sample_rows(&self, x: &CudaTensor, draws: &[Draw]) -> Result<Vec<Option<u32>>> {
        if draws.len() != x.rows {
            return Err(Error::InvalidInput(format!("{} draws for {} rows of logits", draws.len(), x.rows)));
        }
        if !self.paths.device_sampling || draws.is_empty() {
            return super::sample_rows_on_host(self, x, draws);
        }
        let args: Vec<DrawArg> = draws
            .iter()
            .map(|d| DrawArg {
                temperature: d.temperature,
                top_p: d.top_p,
                min_p: d.min_p,
                uniform: d.uniform,
                top_k: d.top_k.min(i32::MAX as usize) as i32,
            })
            .collect();
        let args = self.upload_slice(&args)?;
        let out = self.stream.alloc_zeros::<i32>(x.rows).map_err(device_err)?;
        let (xp, cols, ap, op) = (self.ptr(&x.buf), x.cols as i32, self.ptr(&args), self.ptr(&out));
        let mut b = self.stream.launch_builder(&self.k.sample_rows);
        b.arg(&xp).arg(&cols).arg(&ap).arg(&op);
        let cfg =
            LaunchConfig { grid_dim: (x.rows as u32, 1, 1), block_dim: (SAMPLE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches kernels-cuda/sampling.cu sample_rows; x is [rows, cols], one DrawArg and one i32 per row.
        unsafe { b.launch(cfg) }.map_err(device_err)?;
        let tokens = self.stream.clone_dtoh(&out).map_err(device_err)?;
        Ok(tokens.into_iter().map(|t| u32::try_from(t).ok()).collect())
    }
}

/// The `DrawArg` struct of kernels-cuda/sampling.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct DrawArg {
    temperature: f32,
    top_p: f32,
    min_p: f32,
    uniform: f32,
    top_k: i32,
}
unsafe impl cudarc::driver::DeviceRepr for DrawArg {}

/// Threads per row of kernels-cuda/sampling.cu sample_rows (SAMPLE_THREADS).
const SAMPLE_THREADS: u32 = 1024;

impl CudaBackend {
    fn gather(&self, x: &CudaTensor, idx: &[u32]) -> Result<CudaTensor> {
        let out = self.alloc(idx.len(), x.cols)?;
        if idx.is_empty() {
            return Ok(out);
        }
        let rows = self.upload_slice(idx)?;
        let (xp, rp, op, cols) = (self.ptr(&x.buf), self.ptr(&rows), self.ptr(&out.buf), x.cols as i32);
        let mut b = self.stream.launch_builder(&self.k.gather_rows);
        b.arg(&xp).arg(&rp).arg(&cols).arg(&op);
        // SAFETY: matches kernels-cuda/elementwise.cu gather_rows; indices checked by callers.
        unsafe { b.launch(self.launch_rows(idx.len())) }.map_err(device_err)?;
        Ok(out)
    }

    /// `dst[idx[r]] = src[r]`, or `+= weight[r] * src[r]` with weights.
    fn scatter(&self, dst: &mut CudaTensor, idx: &[u32], weight: Option<&[f32]>, src: &CudaTensor) -> Result<()> {
        if idx.is_empty() {
            return Ok(());
        }
        let rows = self.upload_slice(idx)?;
        let w = weight.map(|w| self.upload_slice(w)).transpose()?;
        let (dp, rp, wp, sp) =
            (self.ptr(&dst.buf), self.ptr(&rows), w.as_ref().map_or(0, |w| self.ptr(w)), self.ptr(&src.buf));
        let cols = dst.cols as i32;
        let mut b = self.stream.launch_builder(&self.k.scatter_rows);
        b.arg(&dp).arg(&rp).arg(&wp).arg(&sp).arg(&cols);
        // SAFETY: matches kernels-cuda/elementwise.cu scatter_rows; indices checked by callers.
        unsafe { b.launch(self.launch_rows(idx.len())) }.map_err(device_err)?;
        Ok(())
    }
}
