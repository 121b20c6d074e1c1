//! llmproxy: an LLM API gateway. The binary `llmproxyd` is a thin shell around this library;
//! tests, benchmarks and fuzz targets reach the same modules.

#[macro_use]
pub mod log;
pub mod cli;
pub mod config;
pub mod router;
pub mod body;
pub mod error;
pub mod mock;
pub mod rand;
pub mod upstream;
pub mod runtime;
pub mod proxy;
pub mod admin;
pub mod server;
