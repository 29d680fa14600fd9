//! The parts of mcp-bridge that both the native Lua module and the host need,
//! written without any Lua binding so they can be unit tested on their own.
//!
//! - [`slots`]: per-route session-slot counters with RAII guards.
//! - [`launcher`]: starting, watching and stopping a worker's host process.
//! - [`procfs`]: process facts from `/proc`, process identities, pidfds.
//! - [`procs`]: async-signal-safe helpers for `pre_exec` and process groups.
//! - [`random`]: identifiers from the OS CSPRNG.
//! - [`runtime`]: where hosts keep their sockets, and why that is safe.
//! - [`levels`]: the log levels every part understands.

pub mod launcher;
pub mod levels;
pub mod procfs;
pub mod procs;
pub mod random;
pub mod runtime;
pub mod slots;
