//! Text processing: the tokenizer (and, with later issues, chat templates, detokenisation and output parsers).
mod tokenizer;

pub use tokenizer::Tokenizer;
