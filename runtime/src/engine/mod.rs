//! The engine core: request scheduling and sampling. Uses only `core` and `alloc` (no_std-friendly).
pub mod blocks;
#[cfg(feature = "std")]
mod core;
#[cfg(feature = "std")]
mod handle;
#[cfg(feature = "std")]
pub use self::core::{
    Engine, EngineConfig, Event, EventKind, FinishReason, MatchedStop, Request, RequestId, TokenInfo, Usage,
};
#[cfg(feature = "std")]
pub use handle::{EngineHandle, RequestStream};
pub mod sampler;
pub mod scheduler;
