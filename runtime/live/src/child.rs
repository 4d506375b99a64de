//! A child ffmpeg process whose raw output is read with a timeout, so a stalled stream never blocks a stop.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command};
use std::time::Duration;

use crate::source::SourceError;

/// A running ffmpeg writing raw samples or frames to its stdout; killed when dropped.
pub struct FfmpegChild {
    name: String,
    child: Child,
    stdout: ChildStdout,
}

impl std::fmt::Debug for FfmpegChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfmpegChild")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What one timed read gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Bytes were read (the count).
    Data(usize),
    /// Nothing arrived within the timeout.
    Idle,
}

impl FfmpegChild {
    /// Starts `cmd` (built by [`crate::source::ffmpeg_command`] plus output options); `name` labels errors.
    pub fn spawn(mut cmd: Command, name: &str) -> Result<Self, SourceError> {
        let mut child = cmd.spawn().map_err(|e| SourceError::Open {
            source_name: name.to_string(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "ffmpeg is not installed (it is needed for ffmpeg: sources)".to_string()
            } else {
                format!("cannot start ffmpeg: {e}")
            },
        })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(SourceError::Open {
                source_name: name.to_string(),
                reason: "ffmpeg's stdout was not captured".into(),
            });
        };
        Ok(Self {
            name: name.to_string(),
            child,
            stdout,
        })
    }

    /// The source name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads what is available into `buf`, waiting at most `timeout`; an exited child is [`SourceError::Ended`] with its message.
    pub fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<ReadOutcome, SourceError> {
        let mut fds = libc::pollfd {
            fd: self.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is one valid pollfd for the child's open stdout.
        let ready = unsafe { libc::poll(&mut fds, 1, ms) };
        if ready == 0 {
            return Ok(ReadOutcome::Idle);
        }
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(ReadOutcome::Idle);
            }
            return Err(self.read_error(err.to_string()));
        }
        match self.stdout.read(buf) {
            Ok(0) => Err(self.ended()),
            Ok(n) => Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(ReadOutcome::Idle),
            Err(e) => Err(self.read_error(e.to_string())),
        }
    }

    fn read_error(&self, reason: String) -> SourceError {
        SourceError::Read {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// The end of the stream, with ffmpeg's own message when it failed.
    fn ended(&mut self) -> SourceError {
        let status = self.child.wait().ok();
        let mut message = String::new();
        if let Some(stderr) = self.child.stderr.as_mut() {
            let _ = stderr.take(4096).read_to_string(&mut message);
        }
        match status {
            Some(s) if !s.success() => SourceError::Read {
                source_name: self.name.clone(),
                reason: format!("ffmpeg exited with {s}: {}", message.trim()),
            },
            _ => SourceError::Ended {
                source_name: self.name.clone(),
            },
        }
    }
}

impl Drop for FfmpegChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
