//! The HTTP server of glmv. This layer knows bytes, HTTP/1.1 and the OpenAI protocol, never tensors: [`http`]
//! frames requests out of a connection's bytes, [`event_loop`] serves many connections on one thread,
//! [`openai`] reads requests and writes chat.completion objects, [`service`] routes, and prompts are built on
//! [`workers`] so the loop never blocks.
pub mod event_loop;
pub mod fetch;
pub mod http;
pub mod log;
pub mod media;
pub mod metrics;
pub mod openai;
pub mod serve;
pub mod service;
pub mod workers;
