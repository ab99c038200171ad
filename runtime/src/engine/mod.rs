//! The engine core: request scheduling and sampling. Uses only `core` and `alloc` (no_std-friendly).
pub mod blocks;
pub mod sampler;
pub mod scheduler;
