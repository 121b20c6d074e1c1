//! llmproxy: an LLM API gateway. The binary `llmproxyd` is a thin shell around this library;
//! tests, benchmarks and fuzz targets reach the same modules.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[macro_use]
pub mod log;
pub mod access;
pub mod admin;
pub mod balance;
pub mod base64;
pub mod body;
pub mod cli;
pub mod client_keys;
pub mod clock;
pub mod config;
pub mod error;
pub mod fields;
pub mod fuzzing;
pub mod glob;
pub mod http1;
pub mod json_scan;
pub mod message;
pub mod metrics;
pub mod mock;
pub mod percent;
pub mod proxy;
pub mod rand;
pub mod ratelimit;
pub mod router;
pub mod runtime;
pub mod sensitive;
pub mod server;
pub mod upstream;
pub mod usage;
