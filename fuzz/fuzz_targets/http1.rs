//! See `llmproxy::fuzzing::http1_requests` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmproxy::fuzzing::http1_requests(data));
