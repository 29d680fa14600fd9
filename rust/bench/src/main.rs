//! mcp-load: the load client of mcp-bridge's benchmark (`make bench`). It
//! speaks MCP to a server directly over stdio or through a gateway over
//! HTTP+SSE or Streamable HTTP (sessions, or stateless requests) with the
//! same code above the transport, so they can be compared, and reports its
//! own CPU time so a reader can tell it was not the bottleneck.
//!
//! It runs on one thread (a tokio `current_thread` runtime): on a small
//! machine it then takes at most one core from what it measures.

mod cli;
mod http;
mod rpc;
mod scenario;
mod session;
mod sse;
mod stats;
mod streamable;
mod sys;

use std::io::Write;
use std::process::ExitCode;

use cli::Scenario;

fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1).collect()) {
        Ok(None) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Some(o)) => o,
        Err(e) => {
            eprint!("mcp-load: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if let Err(e) = sys::raise_fd_limit() {
        eprintln!("mcp-load: cannot raise the descriptor limit: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        match options.scenario {
            Scenario::Echo => scenario::echo(&options).await,
            Scenario::Setup => scenario::setup(&options).await,
            Scenario::Teardown => scenario::teardown(&options).await,
            Scenario::Idle => scenario::idle(&options).await,
            Scenario::Steps => scenario::steps(&options).await,
        }
    });
    if let Err(e) = writeln!(std::io::stdout().lock(), "{result}") {
        eprintln!("mcp-load: writing the result: {e}");
        return ExitCode::FAILURE;
    }
    if result["errors"].as_u64() == Some(0) {
        ExitCode::SUCCESS
    } else {
        for e in result["error_samples"].as_array().into_iter().flatten() {
            eprintln!("mcp-load: {}", e.as_str().unwrap_or_default());
        }
        ExitCode::FAILURE
    }
}
