//! The model graph, written once against [`crate::backend::Backend`].
mod text;

pub use text::{text_batch, TextModel};
