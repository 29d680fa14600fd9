//! The host: one process per nginx worker that is the parent of every
//! backend of that worker's sessions.
//!
//! It accepts connections from the workers of its nginx on a unix socket
//! ([`server`]). A connection whose first frame is [`frame::Kind::Spawn`]
//! becomes an SSE session ([`sse`]): the host starts the backend
//! ([`backend`]) in its own process group, forwards its output as frames,
//! and when the connection closes (or the backend exits) ends its processes
//! ([`teardown`], [`escapees`]) and reaps them ([`reaper`]). Other
//! connections carry client messages to sessions ([`frame::Kind::Deliver`]).
//! The wire format is described in [`frame`].

pub mod backend;
pub mod binding;
pub mod child;
pub mod endpoint;
pub mod escapees;
pub mod events;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod limits;
pub mod lines;
pub mod log;
pub mod mcp;
pub mod message;
pub mod mrtr;
pub mod pool;
pub mod reaper;
pub mod restart;
pub mod rundir;
pub mod scan;
pub mod server;
pub mod spec;
pub mod sse;
pub mod stateless;
pub mod stderr;
pub mod stdin;
pub mod streamable;
pub mod teardown;
