//! Start-up helpers shared by the `cavsync` and `cavsync-export` binaries: logging and one-line errors.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Send `tracing` logs to stderr, filtered by `RUST_LOG` (default: info).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Print an error and its causes on one line (no backtrace) and turn the result into an exit code.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
