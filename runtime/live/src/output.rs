//! Where per-frame results go: stdout, a JSON-lines file, UDP datagrams, or a TCP server any number of clients join and leave.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

/// Errors of an output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output text names no known kind of output.
    #[error("output `{0}`: expected `stdout`, `file:PATH`, `udp://HOST:PORT` or `tcp://HOST:PORT`")]
    Spec(String),
    /// The output could not be opened.
    #[error("output `{spec}`: {reason}")]
    Open {
        /// The output.
        spec: String,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error("output `{spec}`: write failed: {reason}")]
    Write {
        /// The output.
        spec: String,
        /// Why.
        reason: String,
    },
}

/// Most TCP clients served at once; more are refused.
const MAX_CLIENTS: usize = 16;

/// An open output.
pub enum Output {
    /// Standard output.
    Stdout,
    /// A JSON-lines file; lines it cannot take (a full disk, an I/O error) are counted and dropped, never fatal, and writing resumes when it can.
    File {
        /// Its spec.
        spec: String,
        /// The writer.
        writer: std::io::BufWriter<std::fs::File>,
        /// Lines dropped because the file could not take them.
        unwritten: u64,
        /// Whether writes are failing now (logged once per failing stretch).
        failing: bool,
    },
    /// UDP datagrams to one address, one line each.
    Udp {
        /// Its spec.
        spec: String,
        /// The socket.
        socket: UdpSocket,
        /// Where to.
        to: SocketAddr,
    },
    /// A TCP server; each line goes to every connected client.
    Tcp(TcpServer),
}

impl Output {
    /// Opens `spec`: `stdout`, `file:PATH`, `udp://HOST:PORT`, `tcp://HOST:PORT`.
    pub fn open(spec: &str) -> Result<Self, OutputError> {
        let open_err = |reason: String| OutputError::Open {
            spec: spec.to_string(),
            reason,
        };
        if spec == "stdout" {
            return Ok(Self::Stdout);
        }
        if let Some(path) = spec.strip_prefix("file:") {
            let file = std::fs::File::create(path)
                .map_err(|e| open_err(format!("cannot create {path}: {e}")))?;
            return Ok(Self::File {
                spec: spec.to_string(),
                writer: std::io::BufWriter::with_capacity(1 << 16, file),
                unwritten: 0,
                failing: false,
            });
        }
        if let Some(addr) = spec.strip_prefix("udp://") {
            let to = resolve(addr).map_err(open_err)?;
            let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let socket = UdpSocket::bind(bind).map_err(|e| open_err(e.to_string()))?;
            return Ok(Self::Udp {
                spec: spec.to_string(),
                socket,
                to,
            });
        }
        if let Some(addr) = spec.strip_prefix("tcp://") {
            return TcpServer::start(spec, addr).map(Self::Tcp);
        }
        Err(OutputError::Spec(spec.to_string()))
    }

    /// Sends one line (without its newline); slow TCP clients are dropped, never waited for.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), OutputError> {
        match self {
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| OutputError::Write {
                        spec: "stdout".into(),
                        reason: e.to_string(),
                    })
            }
            Self::File {
                spec,
                writer,
                unwritten,
                failing,
            } => {
                // A line enters the buffer whole or not at all: the buffer is flushed first when
                // the line would not fit, and a failed flush keeps what it could not write. The
                // file counts as writable again only once a flush has reached it.
                if writer.capacity() - writer.buffer().len() <= line.len() {
                    match writer.flush() {
                        Ok(()) if *failing => {
                            *failing = false;
                            info!(output = %spec, unwritten = *unwritten, "writing again");
                        }
                        Ok(()) => {}
                        Err(e) => {
                            *unwritten += 1;
                            if !*failing {
                                *failing = true;
                                warn!(output = %spec, error = %e, "cannot write; lines are dropped and counted until it can");
                            }
                            return Ok(());
                        }
                    }
                }
                // The line fits in the buffer now, so this only copies.
                writer
                    .write_all(line)
                    .and_then(|()| writer.write_all(b"\n"))
                    .map_err(|e| OutputError::Write {
                        spec: spec.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(())
            }
            Self::Udp { socket, to, .. } => {
                // A datagram nobody receives is not an error for a broadcast-style output.
                let _ = socket.send_to(line, *to);
                Ok(())
            }
            Self::Tcp(server) => {
                server.broadcast(line);
                Ok(())
            }
        }
    }

    /// Flushes buffered lines.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        match self {
            Self::Stdout => std::io::stdout().flush().map_err(|e| OutputError::Write {
                spec: "stdout".into(),
                reason: e.to_string(),
            }),
            Self::File {
                spec,
                writer,
                unwritten,
                ..
            } => {
                if let Err(e) = writer.flush() {
                    let lost = writer.buffer().iter().filter(|&&b| b == b'\n').count() as u64;
                    *unwritten += lost;
                    warn!(output = %spec, error = %e, lines = lost, "cannot write the last buffered lines");
                }
                Ok(())
            }
            Self::Udp { .. } | Self::Tcp(_) => Ok(()),
        }
    }

    /// Lines this output could not write (file outputs; 0 for the others).
    pub fn unwritten(&self) -> u64 {
        match self {
            Self::File { unwritten, .. } => *unwritten,
            _ => 0,
        }
    }

    /// The TCP server's bound address, for a `tcp://` output.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(server) => Some(server.addr),
            _ => None,
        }
    }
}

/// Resolves `HOST:PORT` to its first address.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))
}

/// A line server: an accept thread adds clients; the pipeline writes each line to all of them without blocking.
pub struct TcpServer {
    spec: String,
    addr: SocketAddr,
    clients: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl TcpServer {
    fn start(spec: &str, addr: &str) -> Result<Self, OutputError> {
        let open_err = |reason: String| OutputError::Open {
            spec: spec.to_string(),
            reason,
        };
        let listener = TcpListener::bind(addr)
            .map_err(|e| open_err(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| open_err(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| open_err(e.to_string()))?;
        let clients = Arc::new(Mutex::new(Vec::with_capacity(MAX_CLIENTS)));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (clients, stop, spec) = (clients.clone(), stop.clone(), spec.to_string());
            std::thread::Builder::new()
                .name("cavsync-tcp-accept".into())
                .spawn(move || accept_loop(&listener, &clients, &stop, &spec))
                .map_err(|e| open_err(e.to_string()))?
        };
        info!(output = %spec, addr = %bound, "serving results over TCP");
        Ok(Self {
            spec: spec.to_string(),
            addr: bound,
            clients,
            stop,
            accept: Some(accept),
        })
    }

    /// Writes `line` and a newline to every client; a client that cannot take it at once is disconnected.
    fn broadcast(&self, line: &[u8]) {
        let Ok(mut clients) = self.clients.try_lock() else {
            // The accept thread is adding a client right now; this line skips TCP.
            return;
        };
        clients.retain_mut(|c| {
            let ok = c.write_all(line).and_then(|()| c.write_all(b"\n")).is_ok();
            if !ok {
                warn!(output = %self.spec, "TCP client too slow or gone; disconnected");
            }
            ok
        });
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    clients: &Mutex<Vec<TcpStream>>,
    stop: &AtomicBool,
    spec: &str,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let mut list = clients.lock().unwrap_or_else(|p| p.into_inner());
                if list.len() >= MAX_CLIENTS {
                    warn!(output = %spec, %peer, "too many TCP clients; refused");
                    continue;
                }
                // Writes never wait: a full socket buffer disconnects the client instead.
                if stream.set_nonblocking(true).is_ok() {
                    let _ = stream.set_nodelay(true);
                    info!(output = %spec, %peer, "TCP client connected");
                    list.push(stream);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                warn!(output = %spec, error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn bad_specs_say_what_is_expected() {
        let err = Output::open("mqtt://x").err().unwrap().to_string();
        assert!(
            err.contains("mqtt://x") && err.contains("tcp://HOST:PORT"),
            "{err}"
        );
        assert!(Output::open("file:/nonexistent-dir/x.jsonl").is_err());
    }

    #[test]
    fn a_full_disk_drops_and_counts_lines_without_stopping() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let mut out = Output::open("file:/dev/full").unwrap();
        let line = [b'x'; 100];
        for _ in 0..2_000 {
            out.write_line(&line).unwrap();
        }
        out.flush().unwrap();
        // All 2000 lines are lost: those refused while the buffer could not be flushed, and the
        // ones still buffered at the end.
        assert_eq!(out.unwritten(), 2_000);
    }

    #[test]
    fn tcp_clients_join_and_leave_and_udp_delivers() {
        let mut out = Output::open("tcp://127.0.0.1:0").unwrap();
        let addr = out.local_addr().unwrap();
        let a = TcpStream::connect(addr).unwrap();
        let b = TcpStream::connect(addr).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while let Output::Tcp(s) = &out {
            if s.clients.lock().unwrap().len() == 2 || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        out.write_line(br#"{"n":1}"#).unwrap();
        drop(b);
        out.write_line(br#"{"n":2}"#).unwrap();
        let mut lines = BufReader::new(a).lines();
        assert_eq!(lines.next().unwrap().unwrap(), r#"{"n":1}"#);
        assert_eq!(lines.next().unwrap().unwrap(), r#"{"n":2}"#);

        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut udp = Output::open(&format!("udp://{}", rx.local_addr().unwrap())).unwrap();
        udp.write_line(b"hello").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }
}
