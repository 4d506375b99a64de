//! The live page of `cavsync run --http ADDR`: a small HTTP server that shows the newest frame
//! blended with its heatmap, the tracked sources and the pipeline's status.
//!
//! The inference thread hands frames over with [`PagePublisher::publish`], which only ever
//! `try_lock`s a preallocated slot and copies into it. A renderer thread turns the newest frame
//! into a JPEG (at most 15 a second), and a few HTTP worker threads, plus one
//! thread per MJPEG client, serve it.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cavsync_core::localize::jet;
use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

/// The most frames a second the renderer encodes.
const MAX_RENDER_RATE_HZ: u32 = 15;

/// The page itself, served at `/`.
const LIVE_HTML: &str = include_str!("../assets/live.html");
/// Multipart boundary of `/stream.mjpg`.
const BOUNDARY: &str = "frame";
/// JPEG quality of the rendered frames.
const JPEG_QUALITY: u8 = 80;
/// Most MJPEG clients served at once; more get 503.
const MAX_STREAM_CLIENTS: usize = 8;
/// HTTP worker threads taking requests off the server's queue.
const HTTP_WORKERS: usize = 3;
/// How long a worker waits for a request before looking at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// How long the renderer and stream threads wait on a condvar before looking at the stop flag.
const WAIT_POLL: Duration = Duration::from_millis(200);
/// A stream re-sends the latest frame after this long without a new one, so dead clients are noticed.
const STREAM_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long `stop` waits for the threads before leaving stragglers (blocked writes) behind.
const STOP_GRACE: Duration = Duration::from_millis(900);
/// Largest frame side a JPEG can hold.
const MAX_SIDE: usize = 65_535;
/// Tracks the slot has room for before it first grows.
const TRACK_CAPACITY: usize = 64;
/// Bytes of status JSON the slot has room for before it first grows.
const STATUS_CAPACITY: usize = 1024;

/// Errors of the live page.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listening socket could not be bound.
    #[error("cannot bind the live page to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why binding failed.
        source: io::Error,
    },
    /// The HTTP server could not be started on the bound socket.
    #[error("cannot serve the live page on {addr}: {source}")]
    Serve {
        /// The address asked for.
        addr: String,
        /// Why the server did not start.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A server thread could not be spawned.
    #[error("cannot start the live page's {name} thread: {source}")]
    Spawn {
        /// Which thread.
        name: &'static str,
        /// Why spawning failed.
        source: io::Error,
    },
    /// The frame slot size is zero or larger than a JPEG can hold.
    #[error("invalid live page frame slot {width}x{height} (each side must be 1..={MAX_SIDE})")]
    Slot {
        /// Requested slot width.
        width: usize,
        /// Requested slot height.
        height: usize,
    },
}

/// One tracked source as the page shows it (normalised image coordinates in [0,1]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PageTrack {
    /// Track identifier.
    pub id: u64,
    /// Centre x, normalised.
    pub x: f32,
    /// Centre y, normalised.
    pub y: f32,
    /// Box `[x0, y0, x1, y1]`, normalised.
    pub bbox: [f32; 4],
    /// Activity of the source in [0,1].
    pub activity: f32,
}

/// The frame the inference thread last published, in preallocated buffers.
struct Slot {
    seq: u64,
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    heatmap: Vec<f32>,
    tracks: Vec<PageTrack>,
    status: String,
}

/// What the HTTP handlers serve: the latest rendered frame.
struct View {
    seq: u64,
    jpeg: Option<Arc<[u8]>>,
    status_body: Arc<str>,
}

/// State shared by the page, its publishers and its threads.
struct Shared {
    max_width: usize,
    max_height: usize,
    stop: AtomicBool,
    slot: Mutex<Slot>,
    slot_ready: Condvar,
    view: Mutex<View>,
    view_changed: Condvar,
    active_streams: AtomicUsize,
    streams: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The live page: an HTTP server on its own threads showing the latest frame, its heatmap and tracks.
pub struct LivePage {
    shared: Arc<Shared>,
    server: Option<Arc<Server>>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl LivePage {
    /// Binds `addr` (e.g. "127.0.0.1:8080", port 0 allowed) and starts serving; `max_width`/`max_height` size the preallocated frame slot.
    pub fn start(addr: &str, max_width: usize, max_height: usize) -> Result<Self, HttpError> {
        let pixels = max_width
            .checked_mul(max_height)
            .filter(|p| p.checked_mul(3).is_some());
        let pixels = match pixels {
            Some(pixels)
                if (1..=MAX_SIDE).contains(&max_width) && (1..=MAX_SIDE).contains(&max_height) =>
            {
                pixels
            }
            _ => {
                return Err(HttpError::Slot {
                    width: max_width,
                    height: max_height,
                });
            }
        };
        let listener = TcpListener::bind(addr).map_err(|source| HttpError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| HttpError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
        let server =
            Arc::new(
                Server::from_listener(listener, None).map_err(|source| HttpError::Serve {
                    addr: addr.to_owned(),
                    source,
                })?,
            );

        let shared = Arc::new(Shared {
            max_width,
            max_height,
            stop: AtomicBool::new(false),
            slot: Mutex::new(Slot {
                seq: 0,
                width: 0,
                height: 0,
                rgb: Vec::with_capacity(pixels * 3),
                heatmap: Vec::with_capacity(pixels),
                tracks: Vec::with_capacity(TRACK_CAPACITY),
                status: String::with_capacity(STATUS_CAPACITY),
            }),
            slot_ready: Condvar::new(),
            view: Mutex::new(View {
                seq: 0,
                jpeg: None,
                status_body: status_body(0, 0, 0, "[]", "null").into(),
            }),
            view_changed: Condvar::new(),
            active_streams: AtomicUsize::new(0),
            streams: Mutex::new(Vec::new()),
        });

        let mut page = LivePage {
            shared: Arc::clone(&shared),
            server: Some(Arc::clone(&server)),
            threads: Vec::with_capacity(HTTP_WORKERS + 1),
            local_addr,
        };
        let renderer = {
            let shared = Arc::clone(&shared);
            spawn("live-render", move || render_loop(&shared))?
        };
        page.threads.push(renderer);
        for _ in 0..HTTP_WORKERS {
            let shared = Arc::clone(&shared);
            let server = Arc::clone(&server);
            page.threads
                .push(spawn("live-http", move || serve_loop(&shared, &server))?);
        }
        tracing::info!(addr = %local_addr, "live page serving");
        Ok(page)
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle the inference thread publishes frames with.
    pub fn publisher(&self) -> PagePublisher {
        PagePublisher {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops the server threads and waits for them (also done on drop), within ~1 s.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let started = Instant::now();
        let deadline = started + STOP_GRACE;
        self.shared.stop.store(true, Ordering::Release);
        self.shared.slot_ready.notify_all();
        self.shared.view_changed.notify_all();
        join_until(std::mem::take(&mut self.threads), deadline);
        // Stream threads are taken after the workers so that none is added behind our back.
        let streams = std::mem::take(
            &mut *self
                .shared
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        join_until(streams, deadline);
        drop(server);
        tracing::info!(
            addr = %self.local_addr,
            elapsed_ms = started.elapsed().as_millis(),
            "live page stopped"
        );
    }
}

impl Drop for LivePage {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Cheap cloneable handle (Send) that hands the newest frame to the page without ever blocking.
#[derive(Clone)]
pub struct PagePublisher {
    shared: Arc<Shared>,
}

impl PagePublisher {
    /// Copies the frame (RGB8, row-major, width*height*3 bytes), its normalised heatmap (width*height f32 in [0,1]), the tracks and a status JSON object text into the page's slot; returns false (and copies nothing) when the page is busy reading the slot or the frame exceeds the slot. Never blocks, never allocates once the slot is warm (capacity reused).
    ///
    /// A frame whose buffers do not match `width`x`height`, or with a zero side, is refused too.
    pub fn publish(
        &self,
        width: usize,
        height: usize,
        rgb: &[u8],
        heatmap: &[f32],
        tracks: &[PageTrack],
        status_json: &str,
    ) -> bool {
        let shared = &*self.shared;
        if width == 0 || height == 0 || width > shared.max_width || height > shared.max_height {
            return false;
        }
        let pixels = width * height;
        if rgb.len() != pixels * 3 || heatmap.len() != pixels {
            return false;
        }
        let mut slot = match shared.slot.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        slot.rgb.clear();
        slot.rgb.extend_from_slice(rgb);
        slot.heatmap.clear();
        slot.heatmap.extend_from_slice(heatmap);
        slot.tracks.clear();
        slot.tracks.extend_from_slice(tracks);
        slot.status.clear();
        slot.status.push_str(status_json);
        slot.width = width;
        slot.height = height;
        slot.seq += 1;
        drop(slot);
        shared.slot_ready.notify_one();
        true
    }
}

fn spawn(
    name: &'static str,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, HttpError> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(|source| HttpError::Spawn { name, source })
}

/// Joins the threads that finish before `deadline`; the others (stuck writing to a client that
/// does not read) are left to end on their own when their write fails.
fn join_until(mut handles: Vec<JoinHandle<()>>, deadline: Instant) {
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    for handle in handles.drain(..) {
        if handle.is_finished() {
            if handle.join().is_err() {
                tracing::error!("a live page thread panicked");
            }
        } else {
            tracing::warn!(
                thread = handle.thread().name().unwrap_or("?"),
                "live page thread still blocked at stop; leaving it behind"
            );
        }
    }
}

/// The JSON served at `/status.json`.
fn status_body(seq: u64, width: usize, height: usize, tracks: &str, status: &str) -> String {
    let mut body = String::with_capacity(64 + tracks.len() + status.len());
    // Writing into a String cannot fail.
    let _ = write!(
        body,
        r#"{{"seq":{seq},"width":{width},"height":{height},"tracks":{tracks},"status":{status}}}"#
    );
    body
}

/// The overlays' jet colour map ([`cavsync_core::localize::jet`]) at 256 levels.
fn jet_lut() -> [[u8; 3]; 256] {
    std::array::from_fn(|i| jet(i as f32 / 255.0).map(|c| c.round() as u8))
}

/// Blends `heatmap` through `lut` over `rgb` at alpha 0.5 into `out`.
fn blend_heatmap(rgb: &[u8], heatmap: &[f32], lut: &[[u8; 3]; 256], out: &mut Vec<u8>) {
    out.clear();
    for (pixel, &heat) in rgb.chunks_exact(3).zip(heatmap) {
        let heat = if heat.is_nan() {
            0.0
        } else {
            heat.clamp(0.0, 1.0)
        };
        let colour = lut[(heat * 255.0).round() as usize];
        for (&p, &c) in pixel.iter().zip(&colour) {
            out.push((u16::from(p) + u16::from(c)).div_ceil(2) as u8);
        }
    }
}

/// Renderer thread: waits for a new frame, blends it, encodes the JPEG and updates the view.
fn render_loop(shared: &Shared) {
    let lut = jet_lut();
    let pixels = shared.max_width * shared.max_height;
    let mut blended: Vec<u8> = Vec::with_capacity(pixels * 3);
    let mut tracks: Vec<PageTrack> = Vec::with_capacity(TRACK_CAPACITY);
    let mut status = String::with_capacity(STATUS_CAPACITY);
    let mut last_seq = 0u64;
    let mut last_jpeg_len = 0usize;
    let mut warned_bad_status = false;
    let min_interval = Duration::from_secs(1) / MAX_RENDER_RATE_HZ;
    let mut next_render = Instant::now();

    while !shared.stopping() {
        let now = Instant::now();
        if now < next_render {
            thread::sleep(next_render - now);
            continue;
        }
        let (seq, width, height) = {
            let mut slot = shared.slot.lock().unwrap_or_else(PoisonError::into_inner);
            while slot.seq == last_seq && !shared.stopping() {
                slot = shared
                    .slot_ready
                    .wait_timeout(slot, WAIT_POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if shared.stopping() {
                break;
            }
            blend_heatmap(&slot.rgb, &slot.heatmap, &lut, &mut blended);
            tracks.clear();
            tracks.extend_from_slice(&slot.tracks);
            status.clear();
            status.push_str(&slot.status);
            (slot.seq, slot.width, slot.height)
        };
        next_render = Instant::now() + min_interval;
        last_seq = seq;

        let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
            continue;
        };
        let mut jpeg = Vec::with_capacity(last_jpeg_len + 1024);
        if let Err(err) = JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY).encode(
            &blended,
            w,
            h,
            ExtendedColorType::Rgb8,
        ) {
            tracing::warn!(%err, seq, "live page could not encode a frame");
            continue;
        }
        last_jpeg_len = jpeg.len();

        let tracks_json = serde_json::to_string(&tracks).unwrap_or_else(|err| {
            tracing::warn!(%err, "live page could not serialise tracks");
            "[]".to_owned()
        });
        let status_ok = is_json_object(&status);
        if !status_ok && !warned_bad_status {
            tracing::warn!(status = %status, "published status is not a JSON object; shown as null");
        }
        warned_bad_status = !status_ok;
        let status_raw = if status_ok { status.as_str() } else { "null" };
        let body = status_body(seq, width, height, &tracks_json, status_raw);

        let mut view = shared.view();
        view.seq = seq;
        view.jpeg = Some(jpeg.into());
        view.status_body = body.into();
        drop(view);
        shared.view_changed.notify_all();
    }
}

fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// HTTP worker: takes requests off the server's queue until the page stops.
fn serve_loop(shared: &Arc<Shared>, server: &Server) {
    while !shared.stopping() {
        match server.recv_timeout(ACCEPT_POLL) {
            Ok(Some(request)) => handle(shared, request),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, "live page failed to accept a connection");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn with_header<R: io::Read>(mut response: Response<R>, name: &str, value: &str) -> Response<R> {
    if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        response.add_header(header);
    }
    response
}

fn respond<R: io::Read>(request: Request, response: Response<R>) {
    if let Err(err) = request.respond(response) {
        tracing::debug!(%err, "live page client went away");
    }
}

fn text(code: u16, body: &str) -> Response<io::Cursor<Vec<u8>>> {
    let response = Response::from_string(body).with_status_code(StatusCode(code));
    with_header(response, "Content-Type", "text/plain; charset=utf-8")
}

fn bytes(content_type: &str, body: impl Into<Vec<u8>>) -> Response<io::Cursor<Vec<u8>>> {
    let response = with_header(Response::from_data(body), "Content-Type", content_type);
    with_header(response, "Cache-Control", "no-store")
}

/// What a request asks for.
enum Route {
    Page,
    Stream,
    Frame,
    Status,
}

fn route(url: &str) -> Option<Route> {
    match url.split(['?', '#']).next().unwrap_or("") {
        "/" | "/index.html" => Some(Route::Page),
        "/stream.mjpg" => Some(Route::Stream),
        "/frame.jpg" => Some(Route::Frame),
        "/status.json" => Some(Route::Status),
        _ => None,
    }
}

fn handle(shared: &Arc<Shared>, request: Request) {
    let Some(route) = route(request.url()) else {
        respond(request, text(404, "not found\n"));
        return;
    };
    let head_only = match request.method() {
        Method::Get => false,
        Method::Head => true,
        _ => {
            let response = with_header(text(405, "method not allowed\n"), "Allow", "GET, HEAD");
            respond(request, response);
            return;
        }
    };
    match route {
        Route::Page => respond(request, bytes("text/html; charset=utf-8", LIVE_HTML)),
        Route::Stream if head_only => respond(request, bytes(&stream_content_type(), Vec::new())),
        Route::Stream => start_stream(shared, request),
        Route::Frame => {
            let jpeg = shared.view().jpeg.clone();
            match jpeg {
                Some(jpeg) => respond(request, bytes("image/jpeg", &*jpeg)),
                None => respond(request, text(503, "no frame published yet\n")),
            }
        }
        Route::Status => {
            let body = Arc::clone(&shared.view().status_body);
            respond(request, bytes("application/json", body.as_bytes()));
        }
    }
}

fn stream_content_type() -> String {
    format!("multipart/x-mixed-replace; boundary={BOUNDARY}")
}

/// Counts a stream client for as long as it lives.
struct StreamSlot(Arc<Shared>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

fn start_stream(shared: &Arc<Shared>, request: Request) {
    let admitted = shared
        .active_streams
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAM_CLIENTS).then_some(n + 1)
        })
        .is_ok();
    if !admitted {
        respond(request, text(503, "too many stream clients\n"));
        return;
    }
    let guard = StreamSlot(Arc::clone(shared));
    let stream_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("live-stream".to_owned())
        .spawn(move || {
            let _guard = guard;
            let peer = request.remote_addr().copied();
            match stream(&stream_shared, request) {
                Ok(()) => tracing::debug!(?peer, "live stream ended"),
                Err(err) => tracing::debug!(?peer, %err, "live stream client went away"),
            }
        });
    match spawned {
        Ok(handle) => {
            let mut streams = shared
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            streams.retain(|h| !h.is_finished());
            streams.push(handle);
        }
        Err(err) => tracing::warn!(%err, "cannot start a live stream thread"),
    }
}

/// Serves `/stream.mjpg`: one multipart part per new JPEG until the client leaves or the page stops.
///
/// HTTP/1.1 clients get a chunked body (one chunk per part) that is properly terminated at
/// stop; HTTP/1.0 clients get a plain body that ends when the connection closes.
fn stream(shared: &Shared, request: Request) -> io::Result<()> {
    let chunked = *request.http_version() >= (1, 1);
    let mut out = request.into_writer();
    let mut head = format!(
        "HTTP/1.{} 200 OK\r\nContent-Type: {}\r\nCache-Control: no-cache, no-store\r\nPragma: no-cache\r\n",
        u8::from(chunked),
        stream_content_type()
    );
    head.push_str(if chunked {
        "Transfer-Encoding: chunked\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    out.write_all(head.as_bytes())?;
    out.flush()?;

    let mut last_seq = 0u64;
    let mut part_head = String::with_capacity(128);
    loop {
        let jpeg = {
            let waited_since = Instant::now();
            let mut view = shared.view();
            loop {
                if shared.stopping() {
                    break None;
                }
                if (view.seq != last_seq || waited_since.elapsed() >= STREAM_HEARTBEAT)
                    && let Some(jpeg) = &view.jpeg
                {
                    last_seq = view.seq;
                    break Some(Arc::clone(jpeg));
                }
                view = shared
                    .view_changed
                    .wait_timeout(view, WAIT_POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        let Some(jpeg) = jpeg else { break };
        part_head.clear();
        let _ = write!(
            part_head,
            "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        if chunked {
            write!(out, "{:X}\r\n", part_head.len() + jpeg.len() + 2)?;
        }
        out.write_all(part_head.as_bytes())?;
        out.write_all(&jpeg)?;
        out.write_all(b"\r\n")?;
        if chunked {
            out.write_all(b"\r\n")?;
        }
        out.flush()?;
    }

    let close = format!("--{BOUNDARY}--\r\n");
    if chunked {
        write!(out, "{:X}\r\n{close}\r\n0\r\n\r\n", close.len())?;
    } else {
        out.write_all(close.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red() {
        let lut = jet_lut();
        assert_eq!(lut[0], [0, 0, 128]);
        assert_eq!(lut[255], [128, 0, 0]);
        let mid = lut[128];
        assert!(mid[1] > 200, "middle of jet is green-ish: {mid:?}");
    }

    #[test]
    fn blend_is_half_image_half_colour() {
        let lut = jet_lut();
        let mut out = Vec::new();
        blend_heatmap(&[100, 100, 100, 0, 0, 0], &[1.0, f32::NAN], &lut, &mut out);
        assert_eq!(out, vec![114, 50, 50, 0, 0, 64]);
    }

    #[test]
    fn status_must_be_an_object() {
        assert!(is_json_object(r#" {"fps": 30}"#));
        assert!(!is_json_object("[1]"));
        assert!(!is_json_object("{oops"));
    }
}
