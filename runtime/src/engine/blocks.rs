//! The paged KV block pool with prefix reuse.
//!
//! Blocks are reference counted. A full block whose tokens are final is registered under a hash chained over its
//! parent's hash and its token keys (a placeholder token's key is its media's content hash), so a later sequence
//! with the same prefix reuses it. Blocks nobody references wait in one eviction queue: blocks without contents
//! at the front (handed out first), cached blocks at the back in least-recently-used order. Allocation pops the
//! front, freeing pushes to the queue and a prefix hit unlinks from the middle: all O(1) but the hash lookup.
use alloc::{collections::BTreeMap, vec, vec::Vec};

pub type BlockId = u32;

const NONE: u32 = u32::MAX;

/// What a cached block holds: its chain hash, its parent's, and its token keys (compared on every hit, so a hash
/// collision can never hand out the wrong KV).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cached {
    hash: u64,
    parent: u64,
    keys: Vec<u64>,
}

#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    cached: Vec<Option<Cached>>,
    by_hash: BTreeMap<u64, BlockId>,
    // The eviction queue, an intrusive doubly linked list over block ids.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    queued: usize,
    hits: u64,
    lookups: u64,
}

/// The chain hash of a block: parent hash and token keys, mixed (SplitMix64 finaliser per word).
pub fn block_hash(parent: u64, keys: &[u64]) -> u64 {
    let mut h = parent ^ 0x9e37_79b9_7f4a_7c15;
    for &k in keys {
        h = mix(h ^ k);
    }
    mix(h ^ keys.len() as u64)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(num_blocks < NONE as usize && block_size > 0, "block pool of {num_blocks} x {block_size}");
        let mut pool = BlockPool {
            block_size,
            refs: vec![0; num_blocks],
            cached: vec![None; num_blocks],
            by_hash: BTreeMap::new(),
            prev: vec![NONE; num_blocks],
            next: vec![NONE; num_blocks],
            head: NONE,
            tail: NONE,
            queued: 0,
            hits: 0,
            lookups: 0,
        };
        for b in 0..num_blocks as u32 {
            pool.push_back(b);
        }
        pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn available(&self) -> usize {
        self.queued
    }

    /// Blocks referenced by some sequence.
    pub fn used(&self) -> usize {
        self.num_blocks() - self.queued
    }

    /// (hits, lookups) of prefix blocks since the pool was made.
    pub fn hit_stats(&self) -> (u64, u64) {
        (self.hits, self.lookups)
    }

    /// Takes a block, evicting the least recently used cached block when no empty one is left.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = self.head;
        if b == NONE {
            return None;
        }
        self.unlink(b);
        if let Some(c) = self.cached[b as usize].take() {
            self.by_hash.remove(&c.hash);
        }
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference; an unreferenced block becomes evictable (cached) or free (empty).
    pub fn release(&mut self, b: BlockId) {
        let r = &mut self.refs[b as usize];
        assert!(*r > 0, "release of unreferenced block {b}");
        *r -= 1;
        if *r == 0 {
            if self.cached[b as usize].is_some() {
                self.push_back(b);
            } else {
                self.push_front(b);
            }
        }
    }

    /// Looks a full block up by chain position and keys; a hit takes a reference to it.
    pub fn lookup(&mut self, parent: u64, keys: &[u64]) -> Option<BlockId> {
        self.lookups += 1;
        let hash = block_hash(parent, keys);
        let &b = self.by_hash.get(&hash)?;
        let c = self.cached[b as usize].as_ref()?;
        if c.parent != parent || c.keys != keys {
            return None;
        }
        if self.refs[b as usize] == 0 {
            self.unlink(b);
        }
        self.refs[b as usize] += 1;
        self.hits += 1;
        Some(b)
    }

    /// Registers a full block with final contents for reuse. Returns its chain hash (the next block's parent).
    pub fn register(&mut self, b: BlockId, parent: u64, keys: &[u64]) -> u64 {
        let hash = block_hash(parent, keys);
        if self.cached[b as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.cached[b as usize] = Some(Cached { hash, parent, keys: keys.to_vec() });
            self.by_hash.insert(hash, b);
        }
        hash
    }

    fn push_back(&mut self, b: u32) {
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NONE;
        if self.tail != NONE {
            self.next[self.tail as usize] = b;
        } else {
            self.head = b;
        }
        self.tail = b;
        self.queued += 1;
    }

    fn push_front(&mut self, b: u32) {
        self.next[b as usize] = self.head;
        self.prev[b as usize] = NONE;
        if self.head != NONE {
            self.prev[self.head as usize] = b;
        } else {
            self.tail = b;
        }
        self.head = b;
        self.queued += 1;
    }

    fn unlink(&mut self, b: u32) {
        let (p, n) = (self.prev[b as usize], self.next[b as usize]);
        if p != NONE {
            self.next[p as usize] = n;
        } else {
            self.head = n;
        }
        if n != NONE {
            self.prev[n as usize] = p;
        } else {
            self.tail = p;
        }
        self.prev[b as usize] = NONE;
        self.next[b as usize] = NONE;
        self.queued -= 1;
    }

    /// Checks the pool's invariants against the references the caller holds (tests).
    pub fn check(&self, held: &[BlockId]) {
        let mut expect = vec![0u32; self.num_blocks()];
        held.iter().for_each(|&b| expect[b as usize] += 1);
        assert_eq!(expect, self.refs, "reference counts differ from the blocks held");
        let mut seen = 0;
        let mut b = self.head;
        while b != NONE {
            assert_eq!(self.refs[b as usize], 0, "queued block {b} is referenced");
            seen += 1;
            b = self.next[b as usize];
        }
        assert_eq!(seen, self.queued);
        assert_eq!(seen + expect.iter().filter(|&&r| r > 0).count(), self.num_blocks(), "a block leaked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_reuse_prefix() {
        let mut pool = BlockPool::new(4, 2);
        let a = pool.allocate().unwrap();
        let h = pool.register(a, 0, &[1, 2]);
        let b = pool.allocate().unwrap();
        pool.register(b, h, &[3, 4]);
        pool.release(a);
        pool.release(b);
        pool.check(&[]);
        // Empty blocks are handed out before cached ones.
        let c = pool.allocate().unwrap();
        assert!(c != a && c != b);
        assert_eq!(pool.lookup(0, &[1, 2]), Some(a));
        assert_eq!(pool.lookup(h, &[3, 4]), Some(b));
        assert_eq!(pool.lookup(h, &[3, 5]), None);
        pool.check(&[a, b, c]);
        assert_eq!(pool.hit_stats(), (2, 3));
    }

    #[test]
    fn eviction_is_least_recently_used() {
        let mut pool = BlockPool::new(2, 1);
        let a = pool.allocate().unwrap();
        pool.register(a, 0, &[1]);
        let b = pool.allocate().unwrap();
        pool.register(b, 0, &[2]);
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.lookup(0, &[1]), None, "evicted");
        assert_eq!(pool.lookup(0, &[2]), Some(b));
        assert_eq!(pool.allocate(), None);
        pool.check(&[a, b]);
    }
}
