//! Fuzz target `frame`: see `mcp_bridge_host::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_bridge_host::fuzzing::frame(data));
