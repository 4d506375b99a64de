//! Start-up helpers shared by the `cavsync` and `cavsync-export` binaries: logging and one-line errors.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Send `tracing` logs to stderr, filtered by `RUST_LOG` (default: info).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Print an error and its causes on one line (no backtrace) and turn the result into an exit code.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", skipping causes the message already quotes.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_joined_once_on_one_line() {
        let inner = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(inner).context("a.wav: cannot read: disk on fire");
        assert_eq!(one_line(&err), "a.wav: cannot read: disk on fire");
        let err = anyhow::anyhow!("root cause\nsecond line").context("while loading b.pth");
        assert_eq!(
            one_line(&err),
            "while loading b.pth: root cause second line"
        );
    }
}
