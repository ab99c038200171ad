//! The model graph, written once against [`crate::backend::Backend`].
mod positions;
mod text;
mod vision;

pub use positions::{mrope_positions, MediaGrid, MediaKind};
pub use text::{text_batch, TextModel};
pub use vision::{Grid, VisionTower};
