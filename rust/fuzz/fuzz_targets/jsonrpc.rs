//! Fuzz target `jsonrpc`: see `mcp_bridge_host::fuzzing::jsonrpc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_bridge_host::fuzzing::jsonrpc(data));
