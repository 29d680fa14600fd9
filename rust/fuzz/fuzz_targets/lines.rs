//! Fuzz target `lines`: see `mcp_bridge_host::fuzzing::lines`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_bridge_host::fuzzing::lines(data));
