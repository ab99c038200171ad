//! The HTTP server of glmv. This layer knows bytes and HTTP/1.1, never tensors: [`http`] frames requests out of
//! a connection's bytes and writes responses, including SSE over chunked transfer encoding.
pub mod event_loop;
pub mod http;
