//! Fuzz target `request`: see `mcp_bridge_host::fuzzing::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_bridge_host::fuzzing::request(data));
