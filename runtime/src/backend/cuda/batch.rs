//! A forward batch on the device: each row's position, cache slot, key count and block-table offset, worked out and
//! uploaded once per step instead of once per layer. Decode steps (one row per sequence) are laid out for a
//! recorded graph (graphs.rs): padded to a bucket of rows, in the bucket's fixed buffers.
use cudarc::driver::CudaSlice;

use super::{device_err, CudaBackend, CudaKvCache, ATTENTION_TILE_ROWS, KEYS_PER_SPLIT, PREFILL_TILE_MIN_ROWS};
use crate::{
    backend::{ForwardBatch, KvCacheSpec},
    Error, Result,
};

/// The slot of a padding row: rope_qkv writes nothing to the cache for it (NO_SLOT in kernels-cuda/attention.cu).
pub(super) const NO_SLOT: u32 = u32::MAX;

/// Which keys each query row attends, as kernels-cuda/attention.cuh reads them (device pointers), and what the host
/// needs to launch it.
#[derive(Clone, Copy)]
pub(super) struct Keys {
    pub begin: u64,
    pub count: u64,
    /// Paged: the block tables and each row's offset into them (0 when the keys are contiguous rows).
    pub table: u64,
    pub offsets: u64,
    pub block_size: i32,
    /// The most keys any row attends: how many splits a decode step takes.
    pub longest: usize,
    /// Tensor-core tiles (first rows, row counts, number of tiles), when some tile has PREFILL_TILE_MIN_ROWS rows.
    pub tiles: Option<(u64, u64, usize)>,
}

/// A recorded graph's shape: rows of its bucket, key splits of its attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GraphKey {
    pub rows: usize,
    pub splits: usize,
}

pub struct CudaBatch {
    /// Rows of the step's tensors: the batch's, or for a graph step its bucket's (the batch's rows first).
    pub(super) rows: usize,
    /// Rows of the forward batch.
    pub(super) real_rows: usize,
    /// (t, h, w) of each row, [rows, 3].
    pub(super) positions: u64,
    pub(super) slots: u64,
    pub(super) keys: Keys,
    /// Set when the step runs as a recorded graph; the pointers above are then the bucket's buffers.
    pub(super) graph: Option<GraphKey>,
    /// The buffers of an eager step.
    _owned: Vec<CudaSlice<u32>>,
}

/// A batch's per-row metadata on the host, as the kernels take it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HostBatch {
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub counts: Vec<u32>,
    pub offsets: Vec<u32>,
    /// Every sequence's block table, one after the other.
    pub tables: Vec<u32>,
    pub longest: usize,
}

impl HostBatch {
    /// Checks `batch` against the cache (rows in order, enough blocks, blocks inside the pool) and lays it out.
    pub fn new(batch: &ForwardBatch, spec: &KvCacheSpec) -> Result<Self> {
        let rows = batch.num_rows();
        let (mut slots, mut counts, mut offsets) = (vec![0u32; rows], vec![0u32; rows], vec![0u32; rows]);
        let mut tables = Vec::new();
        let mut next = 0;
        for s in &batch.seqs {
            let needed = (s.context_len + s.rows.len()).div_ceil(spec.block_size);
            if s.rows.start != next || s.rows.end > rows || s.block_table.len() < needed {
                return Err(Error::KvCache("sequence rows out of order or too few KV blocks".into()));
            }
            if s.block_table.iter().any(|&b| b as usize >= spec.num_blocks) {
                return Err(Error::KvCache(format!("block outside the pool of {}", spec.num_blocks)));
            }
            next = s.rows.end;
            let offset = tables.len() as u32;
            tables.extend_from_slice(&s.block_table);
            for (i, r) in s.rows.clone().enumerate() {
                let pos = s.context_len + i;
                slots[r] =
                    s.block_table[pos / spec.block_size] * spec.block_size as u32 + (pos % spec.block_size) as u32;
                counts[r] = pos as u32 + 1;
                offsets[r] = offset;
            }
        }
        if next != rows {
            return Err(Error::InvalidInput("forward batch rows must be covered by its sequences in order".into()));
        }
        let longest = counts.iter().copied().max().unwrap_or(0) as usize;
        let positions = batch.positions.iter().flatten().copied().collect();
        Ok(HostBatch { positions, slots, counts, offsets, tables, longest })
    }

    /// Pads to `rows` rows that write no cache slot and attend one key (slot 0 of block 0, through one extra table
    /// entry), so that a recorded step runs them harmlessly; and rounds the longest context up to a power-of-two
    /// number of key splits, so that a few recordings serve every context length.
    pub fn pad_for_graph(&mut self, rows: usize) -> usize {
        let pad_table = self.tables.len() as u32;
        self.tables.push(0);
        for _ in self.slots.len()..rows {
            self.positions.extend([0; 3]);
            self.slots.push(NO_SLOT);
            self.counts.push(1);
            self.offsets.push(pad_table);
        }
        let splits = self.longest.div_ceil(KEYS_PER_SPLIT).max(1).next_power_of_two();
        self.longest = splits * KEYS_PER_SPLIT;
        splits
    }
}

/// Rows a decode step is padded to for its recorded graph: the smallest bucket that holds it.
pub(super) const GRAPH_BUCKETS: [usize; 14] = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256];

/// The bucket of a batch, when it is a decode step (every sequence one row) of at most `max_rows` rows.
pub(super) fn graph_bucket(batch: &ForwardBatch, max_rows: usize) -> Option<usize> {
    let rows = batch.num_rows();
    let decode = rows > 0 && batch.seqs.iter().all(|s| s.rows.len() == 1);
    GRAPH_BUCKETS.into_iter().find(|&b| b >= rows).filter(|&b| decode && b <= max_rows)
}

/// Tiles (first row, rows) of at most ATTENTION_TILE_ROWS consecutive rows that share their keys' source: the same
/// block table (paged) or the same first key (contiguous segments).
pub(super) fn query_tiles(key_begin: &[u32], table_offset: Option<&[u32]>) -> Vec<(u32, u32)> {
    let source = |r: usize| table_offset.map_or(key_begin[r], |o| o[r]);
    let mut tiles: Vec<(u32, u32)> = Vec::new();
    for r in 0..key_begin.len() {
        match tiles.last_mut() {
            Some((first, rows)) if (*rows as usize) < ATTENTION_TILE_ROWS && source(*first as usize) == source(r) => {
                *rows += 1
            }
            _ => tiles.push((r as u32, 1)),
        }
    }
    tiles
}

impl CudaBackend {
    /// The tensor-core tiles of these rows, uploaded into `owned`, when some tile is prefill-sized.
    pub(super) fn upload_tiles(
        &self,
        key_begin: &[u32],
        table_offset: Option<&[u32]>,
        owned: &mut Vec<CudaSlice<u32>>,
    ) -> Result<Option<(u64, u64, usize)>> {
        let tiles = query_tiles(key_begin, table_offset);
        if !tiles.iter().any(|&(_, rows)| rows >= PREFILL_TILE_MIN_ROWS) {
            return Ok(None);
        }
        let (first, rows): (Vec<u32>, Vec<u32>) = tiles.into_iter().unzip();
        let n = first.len();
        let first = self.keep(owned, &first)?;
        let rows = self.keep(owned, &rows)?;
        Ok(Some((first, rows, n)))
    }

    /// Uploads `data` into a new buffer kept in `owned`, and returns its device pointer.
    pub(super) fn keep(&self, owned: &mut Vec<CudaSlice<u32>>, data: &[u32]) -> Result<u64> {
        let s = self.upload_slice(data)?;
        let p = self.ptr(&s);
        owned.push(s);
        Ok(p)
    }

    pub(super) fn prepare_batch(&self, batch: &ForwardBatch, cache: &mut CudaKvCache) -> Result<CudaBatch> {
        let mut host = HostBatch::new(batch, &cache.spec)?;
        let real_rows = batch.num_rows();
        let block_size = cache.spec.block_size as i32;
        if let Some(rows) = graph_bucket(batch, self.graph_max_rows()) {
            let splits = host.pad_for_graph(rows);
            let b = cache.graphs.bucket(self, rows, host.tables.len())?;
            for (dst, src) in [
                (&mut b.positions, &host.positions),
                (&mut b.slots, &host.slots),
                (&mut b.counts, &host.counts),
                (&mut b.offsets, &host.offsets),
                (&mut b.tables, &host.tables),
            ] {
                self.stream.memcpy_htod(src.as_slice(), &mut dst.slice_mut(..src.len())).map_err(device_err)?;
            }
            let keys = Keys {
                begin: self.ptr(&b.begin),
                count: self.ptr(&b.counts),
                table: self.ptr(&b.tables),
                offsets: self.ptr(&b.offsets),
                block_size,
                longest: host.longest,
                tiles: None,
            };
            return Ok(CudaBatch {
                rows,
                real_rows,
                positions: self.ptr(&b.positions),
                slots: self.ptr(&b.slots),
                keys,
                graph: Some(GraphKey { rows, splits }),
                _owned: Vec::new(),
            });
        }
        let mut owned = Vec::new();
        let zeros = vec![0u32; real_rows];
        let keys = Keys {
            begin: self.keep(&mut owned, &zeros)?,
            count: self.keep(&mut owned, &host.counts)?,
            table: self.keep(&mut owned, &host.tables)?,
            offsets: self.keep(&mut owned, &host.offsets)?,
            block_size,
            longest: host.longest,
            tiles: self.upload_tiles(&zeros, Some(&host.offsets), &mut owned)?,
        };
        Ok(CudaBatch {
            rows: real_rows,
            real_rows,
            positions: self.keep(&mut owned, &host.positions)?,
            slots: self.keep(&mut owned, &host.slots)?,
            keys,
            graph: None,
            _owned: owned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{KvDtype, SeqSpan};

    fn spec() -> KvCacheSpec {
        KvCacheSpec { num_layers: 1, num_blocks: 8, block_size: 4, num_kv_heads: 1, head_dim: 8, dtype: KvDtype::F32 }
    }

    fn decode_batch(contexts: &[(usize, Vec<u32>)]) -> ForwardBatch {
        let seqs = contexts
            .iter()
            .enumerate()
            .map(|(i, (context_len, table))| SeqSpan {
                rows: i..i + 1,
                context_len: *context_len,
                block_table: table.clone(),
            })
            .collect();
        let positions = contexts.iter().map(|(c, _)| [*c as u32; 3]).collect();
        ForwardBatch { seqs, positions }
    }

    #[test]
    fn query_tiles_split_sequences_and_long_runs() {
        // Paged: three sequences (block tables at 0, 5, 9) of 70, 1 and 3 rows; rows of one sequence share a tile,
        // at most 64 per tile.
        let offsets: Vec<u32> = [(0u32, 70usize), (5, 1), (9, 3)].iter().flat_map(|&(o, n)| vec![o; n]).collect();
        let begin = vec![0u32; offsets.len()];
        assert_eq!(query_tiles(&begin, Some(&offsets)), [(0, 64), (64, 6), (70, 1), (71, 3)]);
        // Contiguous segments: two images of 20 and 130 patches starting at rows 0 and 20.
        let begin: Vec<u32> = [(0u32, 20usize), (20, 130)].iter().flat_map(|&(b, n)| vec![b; n]).collect();
        assert_eq!(query_tiles(&begin, None), [(0, 20), (20, 64), (84, 64), (148, 2)]);
        assert!(query_tiles(&[], None).is_empty());
    }

    #[test]
    fn host_batch_lays_out_slots_counts_and_tables() {
        // Two sequences: 6 cached tokens + 1 new (blocks 3, 5), and a 3-row chunk at 0 (block 7).
        let batch = ForwardBatch {
            seqs: vec![
                SeqSpan { rows: 0..1, context_len: 6, block_table: vec![3, 5] },
                SeqSpan { rows: 1..4, context_len: 0, block_table: vec![7] },
            ],
            positions: vec![[6; 3], [0; 3], [1; 3], [2; 3]],
        };
        let h = HostBatch::new(&batch, &spec()).unwrap();
        assert_eq!(h.slots, [5 * 4 + 2, 28, 29, 30]);
        assert_eq!(h.counts, [7, 1, 2, 3]);
        assert_eq!(h.offsets, [0, 2, 2, 2]);
        assert_eq!(h.tables, [3, 5, 7]);
        assert_eq!(h.longest, 7);
        assert_eq!(h.positions.len(), 12);
        // Too few blocks, a block outside the pool, rows not covered: errors, not panics.
        let mut short = batch.clone();
        short.seqs[0].block_table.pop();
        assert!(HostBatch::new(&short, &spec()).is_err());
        let mut outside = batch.clone();
        outside.seqs[1].block_table[0] = 8;
        assert!(HostBatch::new(&outside, &spec()).is_err());
        let mut uncovered = batch;
        uncovered.positions.push([3; 3]);
        assert!(HostBatch::new(&uncovered, &spec()).is_err());
    }

    #[test]
    fn decode_steps_pad_to_buckets_that_write_nothing() {
        let batch = decode_batch(&[(5, vec![1, 2]), (300, (0..8).cycle().take(76).collect())]);
        let mut spec = spec();
        spec.num_blocks = 8;
        let mut h = HostBatch::new(&batch, &spec).unwrap();
        assert_eq!(graph_bucket(&batch, 256), Some(2));
        let mut three = decode_batch(&[(5, vec![1, 2]), (1, vec![4]), (2, vec![6])]);
        assert_eq!(graph_bucket(&three, 256), Some(4));
        assert_eq!(graph_bucket(&three, 2), None, "over --cuda-graph-max-bs");
        three.seqs[2].rows = 2..3;
        three.seqs.pop();
        three.seqs[1].rows = 1..3;
        assert_eq!(graph_bucket(&three, 256), None, "a chunk of two rows is not a decode step");
        assert_eq!(graph_bucket(&ForwardBatch::default(), 256), None);
        assert_eq!(graph_bucket(&decode_batch(&vec![(0, vec![0]); 257]), 1024), None, "beyond the largest bucket");

        // 301 keys at most: two splits of 256; padded to 4 rows (a power of two, so 3 rows would take 4 too).
        let splits = h.pad_for_graph(4);
        assert_eq!((splits, h.longest), (2, 512));
        assert_eq!(h.slots[2..], [NO_SLOT, NO_SLOT]);
        assert_eq!(h.counts[2..], [1, 1]);
        let pad = h.offsets[2] as usize;
        assert_eq!((h.offsets[3] as usize, h.tables.len(), h.tables[pad]), (pad, pad + 1, 0));
        assert_eq!(h.positions.len(), 12);
        // Three splits' worth of keys round up to four.
        let mut h = HostBatch::new(&decode_batch(&[(600, (0..8).cycle().take(151).collect())]), &spec).unwrap();
        assert_eq!(h.pad_for_graph(1), 4);
    }
}
