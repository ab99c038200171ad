//! Decode steps as CUDA graphs. A decode step of GLM-4.5V is about 700 kernel launches of a few microseconds of
//! work each, so launching them one by one costs as much as the step's weight reads; a graph launches them all at
//! once. The first step of each shape (bucket of rows, key splits) is recorded by stream capture, later steps copy
//! their inputs into the bucket's fixed buffers and replay it. The engine runs a short-context step of each bucket
//! before serving (`Backend::decode_rows_to_record`), so requests find those recorded.
//!
//! A recording holds device pointers: the weights, the KV cache and the bucket's buffers. The buckets live in the
//! KV cache (one cache serves one model), so a recording is never replayed over another cache. Anything in the
//! layers that needs the host (a copy to it, an upload from pageable memory) makes the capture fail: the bucket
//! then runs eagerly, with a log line.
use cudarc::driver::{sys, CudaGraph, CudaSlice};

use super::{batch::GraphKey, device_err, CudaBackend, CudaBatch, CudaKvCache, CudaTensor};
use crate::{backend::DecoderLayers, Error, Result};

/// A recorded decode step.
struct Recorded(CudaGraph);
// SAFETY: a recording is only touched through `&mut CudaKvCache` (launched, dropped), never from two threads at
// once, which is all CUDA asks of graph objects.
unsafe impl Send for Recorded {}

/// One bucket of rows: the buffers its steps read their inputs from, and its recordings by key splits.
pub(super) struct Bucket {
    rows: usize,
    pub positions: CudaSlice<u32>,
    pub slots: CudaSlice<u32>,
    pub counts: CudaSlice<u32>,
    pub offsets: CudaSlice<u32>,
    /// Zeros: every row's first key (paged keys start at 0).
    pub begin: CudaSlice<u32>,
    /// The block tables, with room to grow; growing drops the recordings (they hold the old pointer).
    pub tables: CudaSlice<u32>,
    /// Hidden states into and out of the layers, [rows, width].
    io: Option<(usize, CudaSlice<f32>, CudaSlice<f32>)>,
    recorded: Vec<(usize, Recorded)>,
    /// Recording failed; this bucket's steps run eagerly.
    unrecordable: bool,
}

/// The buckets of one KV cache.
#[derive(Default)]
pub(super) struct DecodeGraphs {
    buckets: Vec<Bucket>,
}

impl DecodeGraphs {
    /// The bucket of `rows` rows, its tables buffer holding at least `table_len` entries.
    pub fn bucket(&mut self, be: &CudaBackend, rows: usize, table_len: usize) -> Result<&mut Bucket> {
        let i = match self.buckets.iter().position(|b| b.rows == rows) {
            Some(i) => i,
            None => {
                let zeros = |n: usize| be.stream.alloc_zeros::<u32>(n.max(1)).map_err(device_err);
                self.buckets.push(Bucket {
                    rows,
                    positions: zeros(rows * 3)?,
                    slots: zeros(rows)?,
                    counts: zeros(rows)?,
                    offsets: zeros(rows)?,
                    begin: zeros(rows)?,
                    tables: zeros(table_len.next_power_of_two())?,
                    io: None,
                    recorded: Vec::new(),
                    unrecordable: false,
                });
                self.buckets.len() - 1
            }
        };
        let b = &mut self.buckets[i];
        if b.tables.len() < table_len {
            b.tables = be.stream.alloc_zeros::<u32>(table_len.next_power_of_two()).map_err(device_err)?;
            b.recorded.clear();
        }
        Ok(b)
    }

    /// Recordings held, over all buckets (for tests and logs).
    pub fn recorded(&self) -> usize {
        self.buckets.iter().map(|b| b.recorded.len()).sum()
    }
}

impl Bucket {
    /// The input and output buffers for hidden states of `width` columns.
    fn io(&mut self, be: &CudaBackend, width: usize) -> Result<(u64, u64)> {
        if self.io.as_ref().is_none_or(|(w, _, _)| *w != width) {
            let n = self.rows * width;
            let input = be.stream.alloc_zeros::<f32>(n).map_err(device_err)?;
            let output = be.stream.alloc_zeros::<f32>(n).map_err(device_err)?;
            self.io = Some((width, input, output));
            self.recorded.clear();
        }
        let (_, input, output) = self.io.as_ref().expect("set above");
        Ok((be.ptr(input), be.ptr(output)))
    }
}

impl CudaBackend {
    /// Decode steps of at most this many rows run as graphs (0: none).
    pub(super) fn graph_max_rows(&self) -> usize {
        if self.paths.cuda_graphs {
            self.graph_max_rows
        } else {
            0
        }
    }

    /// Copies `rows` rows of `width` floats from `src` to `dst` on the stream (recordable).
    fn copy_rows(&self, dst: u64, src: u64, rows: usize, width: usize) -> Result<()> {
        // SAFETY: both ranges are device buffers of at least rows * width floats (callers' shapes).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, rows * width * 4, self.stream.cu_stream()) }
            .map_err(device_err)
    }

    pub(super) fn run_graph_step(
        &self,
        hidden: CudaTensor,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layers: &mut DecoderLayers<'_, Self>,
    ) -> Result<CudaTensor> {
        let Some(key) = batch.graph else { return layers(hidden, batch, cache) };
        if hidden.rows != batch.real_rows {
            return Err(Error::InvalidInput(format!("{} hidden rows for a batch of {}", hidden.rows, batch.real_rows)));
        }
        // Out of the cache while the layers borrow it; put back whatever happens.
        let Some(i) = cache.graphs.buckets.iter().position(|b| b.rows == key.rows) else {
            return Err(Error::InvalidInput("the batch was prepared for another KV cache".into()));
        };
        let mut bucket = cache.graphs.buckets.swap_remove(i);
        let result = self.replay(&mut bucket, key, hidden, batch, cache, layers);
        cache.graphs.buckets.push(bucket);
        result
    }

    fn replay(
        &self,
        bucket: &mut Bucket,
        key: GraphKey,
        hidden: CudaTensor,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layers: &mut DecoderLayers<'_, Self>,
    ) -> Result<CudaTensor> {
        let width = hidden.cols;
        let (input, output) = bucket.io(self, width)?;
        self.copy_rows(input, self.ptr(&hidden.buf), hidden.rows, width)?;
        drop(hidden);
        let rows = bucket.rows;
        // The layers over the input buffer, their result into the output buffer: what is recorded, or run eagerly.
        let mut body = |cache: &mut CudaKvCache| -> Result<()> {
            let x = self.alloc(rows, width)?;
            self.copy_rows(self.ptr(&x.buf), input, rows, width)?;
            let out = layers(x, batch, cache)?;
            if out.rows != rows || out.cols != width {
                return Err(Error::InvalidInput("the decoder changed the hidden shape".into()));
            }
            self.copy_rows(output, self.ptr(&out.buf), rows, width)
        };
        let known = bucket.recorded.iter().position(|(splits, _)| *splits == key.splits);
        let graph = match known {
            Some(i) => Some(&bucket.recorded[i].1),
            None if bucket.unrecordable => None,
            None => match self.record(&mut body, cache) {
                Ok(g) => {
                    bucket.recorded.push((key.splits, Recorded(g)));
                    bucket.recorded.last().map(|(_, r)| r)
                }
                Err(e) => {
                    eprintln!("[glmv] decode steps of {rows} rows run without a CUDA graph: recording failed ({e})");
                    bucket.unrecordable = true;
                    None
                }
            },
        };
        match graph {
            Some(Recorded(g)) => g.launch().map_err(device_err)?,
            None => body(cache)?,
        }
        let out = self.alloc(batch.real_rows, width)?;
        self.copy_rows(self.ptr(&out.buf), output, batch.real_rows, width)?;
        Ok(out)
    }

    /// Records `body` by stream capture. Nothing runs while capturing; the caller launches the recording.
    fn record(
        &self,
        body: &mut dyn FnMut(&mut CudaKvCache) -> Result<()>,
        cache: &mut CudaKvCache,
    ) -> Result<CudaGraph> {
        // Thread-local mode: a call on this thread that cannot be recorded fails the capture instead of running.
        self.stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(device_err)?;
        let ran = body(cache);
        // Frees that a broken capture refused are recorded in the context, and cudarc's end_capture returns that
        // record before it ends the capture: take it first, so that the capture always ends and the stream works
        // again whatever happened.
        let refused = self.ctx.check_err();
        let ended = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        ran?;
        refused.map_err(device_err)?;
        let graph = ended.map_err(device_err)?.ok_or_else(|| Error::Device("the capture recorded nothing".into()))?;
        graph.upload().map_err(device_err)?;
        Ok(graph)
    }
}
