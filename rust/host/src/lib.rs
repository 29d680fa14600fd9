//! The host: one process per nginx worker that is the parent of every
//! backend of that worker's sessions.
//!
//! It accepts connections from its worker on a unix socket. A connection
//! whose first frame is [`frame::Kind::Spawn`] becomes a session: the host
//! starts the backend in its own process group, forwards its output as
//! frames, and when the connection closes (or the backend exits) sends
//! SIGTERM to the group, SIGKILL after the grace period, and reaps. Other
//! connections carry client messages to sessions ([`frame::Kind::Deliver`]).
//! The wire format is described in [`frame`].

pub mod backend;
pub mod escapees;
pub mod frame;
pub mod lines;
pub mod log;
pub mod message;
pub mod reaper;
pub mod server;
pub mod session;
pub mod spec;
