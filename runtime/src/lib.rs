//! glmv-runtime: everything between a checkpoint on disk and logits, written once against the [`backend::Backend`]
//! trait.
//!
//! The engine core (`engine`) uses only `core` and `alloc`; everything that needs an operating system (files, mmap,
//! threads, tokenizers, the CPU backend) sits behind the default `std` feature, so
//! `cargo build -p glmv-runtime --no-default-features` builds the core alone.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod engine;
/// Always built: the stream parsers are `core` + `alloc`; the std-only parts are gated inside.
pub mod text;

#[cfg(feature = "std")]
pub mod backend;
#[cfg(feature = "std")]
pub mod config;
#[cfg(feature = "std")]
pub mod demo;
#[cfg(feature = "std")]
mod error;
#[cfg(feature = "std")]
pub mod media;
#[cfg(feature = "std")]
pub mod model;
#[cfg(feature = "std")]
pub mod pipeline;
#[cfg(feature = "std")]
pub mod weights;

#[cfg(feature = "std")]
pub use error::{Error, Result};
