//! See `llmproxy::fuzzing::sse` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmproxy::fuzzing::sse(data));
