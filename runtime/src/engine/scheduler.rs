//! The fixed-slot scheduler: which tokens of which sequences go into the next forward step.
//!
//! Every step runs all decoding sequences (one token each), then prefill chunks of partially prefilled and newly
//! admitted sequences under a token budget, so a long prompt never stalls running decodes. Sequences live in at
//! most `max_running` slots. Admission is first come, first served within a priority (higher first), head of line
//! only, so a large request is never starved by small ones behind it. When the KV pool runs dry mid-generation,
//! the newest running sequence is preempted: its blocks are released and it waits, first in line for its arrival
//! time, to be recomputed (prompt and generated tokens) later. Nothing is dropped.
use alloc::{collections::BTreeMap, vec::Vec};

use super::blocks::{BlockId, BlockPool};

pub type SeqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub max_running: usize,
    /// Prefill tokens per step (`--chunked-prefill-size`).
    pub prefill_budget: usize,
    /// Longest sequence (prompt + generated) a request may reach (`--context-length`).
    pub max_context: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// prompt + max_new_tokens over the context length.
    ContextTooLong {
        prompt: usize,
        max_new_tokens: usize,
        max_context: usize,
    },
    /// The request could never fit in the KV pool, even alone.
    TooLargeForPool {
        tokens: usize,
        pool_tokens: usize,
    },
    EmptyPrompt,
    DuplicateId(SeqId),
}

#[derive(Debug)]
struct Seq {
    priority: i32,
    arrival: u64,
    /// One key per known token: prompt, then generated. Placeholder tokens carry their media's content hash.
    keys: Vec<u64>,
    /// Tokens whose KV is in `blocks`.
    computed: usize,
    blocks: Vec<BlockId>,
    /// Full blocks registered in (or taken from) the prefix cache, and the chain hash after them.
    registered: usize,
    chain: u64,
    cached_tokens: usize,
    slot: Option<usize>,
    preemptions: u32,
}

/// `len` tokens of sequence `seq` starting at token `start`; `samples` when the chunk ends at the sequence's last
/// known token, so its last row's logits pick the next token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub seq: SeqId,
    pub start: usize,
    pub len: usize,
    pub samples: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub chunks: Vec<Chunk>,
    /// Sequences preempted while planning this step (they lost their KV and wait to be recomputed).
    pub preempted: Vec<SeqId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    pub used_blocks: usize,
    pub total_blocks: usize,
    pub prefix_hits: u64,
    pub prefix_lookups: u64,
    pub preemptions: u64,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    seqs: BTreeMap<SeqId, Seq>,
    /// Waiting sequences, best first: priority descending, then arrival ascending.
    waiting: Vec<SeqId>,
    slots: Vec<Option<SeqId>>,
    next_arrival: u64,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, pool: BlockPool) -> Self {
        let slots = alloc::vec![None; cfg.max_running.max(1)];
        Scheduler { cfg, pool, seqs: BTreeMap::new(), waiting: Vec::new(), slots, next_arrival: 0, preemptions: 0 }
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// Queues a sequence. `keys` are its prompt's token keys.
    pub fn submit(
        &mut self,
        id: SeqId,
        keys: Vec<u64>,
        max_new_tokens: usize,
        priority: i32,
    ) -> Result<(), SubmitError> {
        if keys.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if self.seqs.contains_key(&id) {
            return Err(SubmitError::DuplicateId(id));
        }
        let total = keys.len() + max_new_tokens;
        if total > self.cfg.max_context {
            return Err(SubmitError::ContextTooLong {
                prompt: keys.len(),
                max_new_tokens,
                max_context: self.cfg.max_context,
            });
        }
        let pool_tokens = self.pool.num_blocks() * self.pool.block_size();
        if total > pool_tokens {
            return Err(SubmitError::TooLargeForPool { tokens: total, pool_tokens });
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.seqs.insert(
            id,
            Seq {
                priority,
                arrival,
                keys,
                computed: 0,
                blocks: Vec::new(),
                registered: 0,
                chain: 0,
                cached_tokens: 0,
                slot: None,
                preemptions: 0,
            },
        );
        self.enqueue(id);
        Ok(())
    }

    fn enqueue(&mut self, id: SeqId) {
        let s = &self.seqs[&id];
        let key = (-(s.priority as i64), s.arrival);
        let at = self.waiting.partition_point(|w| {
            let o = &self.seqs[w];
            (-(o.priority as i64), o.arrival) < key
        });
        self.waiting.insert(at, id);
    }

    /// Plans the next step. Call [`Scheduler::complete`] once the step ran.
    pub fn schedule(&mut self) -> Schedule {
        let mut out = Schedule::default();
        let bs = self.pool.block_size();
        // Running sequences, oldest first, so preemption victims (newest) are never already planned.
        let mut running: Vec<SeqId> = self.slots.iter().flatten().copied().collect();
        running.sort_by_key(|id| self.seqs[id].arrival);

        for &id in &running {
            if !self.seqs.contains_key(&id) || self.seqs[&id].slot.is_none() {
                continue; // preempted earlier in this loop
            }
            let s = &self.seqs[&id];
            if s.computed + 1 != s.keys.len() {
                continue;
            }
            let need = (s.computed + 1).div_ceil(bs).saturating_sub(s.blocks.len());
            if !self.reserve(id, need, &mut out) {
                continue;
            }
            let s = &self.seqs[&id];
            out.chunks.push(Chunk { seq: id, start: s.computed, len: 1, samples: true });
        }

        let mut budget = self.cfg.prefill_budget;
        for &id in &running {
            if budget == 0 {
                break;
            }
            let Some(s) = self.seqs.get(&id).filter(|s| s.slot.is_some()) else { continue };
            if s.computed + 1 >= s.keys.len() {
                continue;
            }
            if let Some(len) = self.grow_for_chunk(id, budget) {
                budget -= len;
                out.chunks.push(self.chunk(id, len));
            }
        }

        while budget > 0 && !self.waiting.is_empty() {
            let Some(slot) = self.slots.iter().position(Option::is_none) else { break };
            let id = self.waiting[0];
            self.match_prefix(id);
            match self.grow_for_chunk(id, budget) {
                Some(len) => {
                    self.waiting.remove(0);
                    self.slots[slot] = Some(id);
                    self.seqs.get_mut(&id).expect("waiting sequence exists").slot = Some(slot);
                    budget -= len;
                    out.chunks.push(self.chunk(id, len));
                }
                None => {
                    self.drop_kv(id);
                    break;
                }
            }
        }

        // Every running sequence stalled on blocks (none decoding, none fitting): free the newest to make progress.
        if out.chunks.is_empty() && self.slots.iter().any(Option::is_some) {
            if let Some(victim) = self.newest_running() {
                self.preempt(victim, &mut out);
                return self.schedule_after_preemption(out);
            }
        }
        out
    }

    fn schedule_after_preemption(&mut self, mut out: Schedule) -> Schedule {
        let next = self.schedule();
        out.chunks = next.chunks;
        out.preempted.extend(next.preempted);
        out
    }

    fn chunk(&self, id: SeqId, len: usize) -> Chunk {
        let s = &self.seqs[&id];
        Chunk { seq: id, start: s.computed, len, samples: s.computed + len == s.keys.len() }
    }

    /// Makes sure `id` has `need` more blocks, preempting newer sequences if the pool is short.
    /// False when `id` itself had to be preempted.
    fn reserve(&mut self, id: SeqId, need: usize, out: &mut Schedule) -> bool {
        while self.pool.available() < need {
            let victim = self.newest_running().expect("the sequence itself is running");
            self.preempt(victim, out);
            if victim == id {
                return false;
            }
        }
        for _ in 0..need {
            let b = self.pool.allocate().expect("reserved above");
            self.seqs.get_mut(&id).expect("sequence exists").blocks.push(b);
        }
        true
    }

    /// Extends `id`'s blocks for its next prefill chunk of at most `budget` tokens, shortened to the blocks the pool
    /// can give. Returns the chunk length, or None if not even one token fits.
    fn grow_for_chunk(&mut self, id: SeqId, budget: usize) -> Option<usize> {
        let bs = self.pool.block_size();
        let s = &self.seqs[&id];
        let remaining = s.keys.len() - s.computed;
        let capacity = (s.blocks.len() + self.pool.available()) * bs - s.computed;
        let len = remaining.min(budget).min(capacity);
        if len == 0 {
            return None;
        }
        let need = (s.computed + len).div_ceil(bs).saturating_sub(s.blocks.len());
        for _ in 0..need {
            let b = self.pool.allocate().expect("capacity checked");
            self.seqs.get_mut(&id).expect("sequence exists").blocks.push(b);
        }
        Some(len)
    }

    /// Reuses cached blocks for the longest cached prefix of a waiting sequence, leaving at least one token to
    /// compute (its logits choose the next token).
    fn match_prefix(&mut self, id: SeqId) {
        let bs = self.pool.block_size();
        let s = self.seqs.get_mut(&id).expect("waiting sequence exists");
        if !s.blocks.is_empty() {
            return;
        }
        let full = (s.keys.len() - 1) / bs;
        let mut chain = 0;
        for i in 0..full {
            match self.pool.lookup(chain, &s.keys[i * bs..(i + 1) * bs]) {
                Some(b) => {
                    s.blocks.push(b);
                    chain = super::blocks::block_hash(chain, &s.keys[i * bs..(i + 1) * bs]);
                }
                None => break,
            }
        }
        s.registered = s.blocks.len();
        s.computed = s.registered * bs;
        s.cached_tokens = s.computed;
        s.chain = chain;
    }

    fn newest_running(&self) -> Option<SeqId> {
        self.slots.iter().flatten().copied().max_by_key(|id| self.seqs[id].arrival)
    }

    fn preempt(&mut self, id: SeqId, out: &mut Schedule) {
        out.chunks.retain(|c| c.seq != id);
        out.preempted.push(id);
        self.preemptions += 1;
        self.drop_kv(id);
        let s = self.seqs.get_mut(&id).expect("running sequence exists");
        s.preemptions += 1;
        if let Some(slot) = s.slot.take() {
            self.slots[slot] = None;
        }
        self.enqueue(id);
    }

    /// Releases a sequence's blocks; it will be recomputed from its first token.
    fn drop_kv(&mut self, id: SeqId) {
        let s = self.seqs.get_mut(&id).expect("sequence exists");
        for b in s.blocks.drain(..) {
            self.pool.release(b);
        }
        s.computed = 0;
        s.registered = 0;
        s.chain = 0;
    }

    /// Records that the planned chunks ran: their tokens are in the KV cache now, and newly full blocks are offered
    /// for prefix reuse.
    pub fn complete(&mut self, schedule: &Schedule) {
        let bs = self.pool.block_size();
        for c in &schedule.chunks {
            let Some(s) = self.seqs.get_mut(&c.seq) else { continue };
            if s.computed != c.start {
                continue; // stale (aborted and resubmitted); nothing to record
            }
            s.computed += c.len;
            while (s.registered + 1) * bs <= s.computed {
                let i = s.registered;
                s.chain = self.pool.register(s.blocks[i], s.chain, &s.keys[i * bs..(i + 1) * bs]);
                s.registered += 1;
            }
        }
    }

    /// Adds a sampled token to a running sequence.
    pub fn append(&mut self, id: SeqId, key: u64) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.keys.push(key);
        }
    }

    /// Removes a sequence (finished, aborted or failed) and frees its blocks and slot. Unknown ids are ignored.
    pub fn remove(&mut self, id: SeqId) {
        let Some(mut s) = self.seqs.remove(&id) else { return };
        for b in s.blocks.drain(..) {
            self.pool.release(b);
        }
        if let Some(slot) = s.slot {
            self.slots[slot] = None;
        }
        self.waiting.retain(|&w| w != id);
    }

    pub fn block_table(&self, id: SeqId) -> &[BlockId] {
        self.seqs.get(&id).map_or(&[], |s| &s.blocks)
    }

    pub fn slot(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).and_then(|s| s.slot)
    }

    /// Prompt tokens served from the prefix cache when the sequence was (last) admitted.
    pub fn cached_tokens(&self, id: SeqId) -> usize {
        self.seqs.get(&id).map_or(0, |s| s.cached_tokens)
    }

    pub fn preemptions_of(&self, id: SeqId) -> u32 {
        self.seqs.get(&id).map_or(0, |s| s.preemptions)
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        let (prefix_hits, prefix_lookups) = self.pool.hit_stats();
        SchedulerStats {
            running: self.slots.iter().flatten().count(),
            waiting: self.waiting.len(),
            used_blocks: self.pool.used(),
            total_blocks: self.pool.num_blocks(),
            prefix_hits,
            prefix_lookups,
            preemptions: self.preemptions,
        }
    }

    /// Checks that every block is either held by exactly the sequences that list it or free, and that slots and
    /// the waiting queue account for every sequence (tests).
    pub fn check_invariants(&self) {
        let held: Vec<BlockId> = self.seqs.values().flat_map(|s| s.blocks.iter().copied()).collect();
        self.pool.check(&held);
        for (id, s) in &self.seqs {
            let waiting = self.waiting.contains(id);
            assert!(waiting != s.slot.is_some(), "sequence {id} must be either waiting or in a slot");
            if let Some(slot) = s.slot {
                assert_eq!(self.slots[slot], Some(*id));
            }
            assert!(s.blocks.len() * self.pool.block_size() >= s.computed);
        }
        assert_eq!(self.slots.iter().flatten().count() + self.waiting.len(), self.seqs.len(), "a slot was lost");
    }
}

#[cfg(test)]
mod tests;
