//! The OpenAI protocol: request bodies in, prompts built, engine events out as chat.completion(.chunk) and
//! text_completion objects.
pub mod choice;
mod error;
mod fields;
pub mod prompt;
pub mod reply;
pub mod request;

pub use error::ApiError;
