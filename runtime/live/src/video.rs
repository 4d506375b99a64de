//! Live video capture: V4L2 (mmap streaming, YUYV or MJPEG) or ffmpeg (raw RGB) into preallocated frames stamped on the monotonic clock, reopened with backoff.

use std::sync::atomic::Ordering;
use std::time::Duration;

use heapless::spsc::{Consumer, Producer};
use image::RgbImage;
use tracing::{info, warn};
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;

use crate::child::{FfmpegChild, ReadOutcome};
use crate::clock::now_ns;
use crate::pipeline::{Backoff, Shared};
use crate::pixel::{mjpeg_to_rgb, yuyv_to_rgb};
use crate::source::{SourceError, VideoSpec, ffmpeg_command};

/// Longest wait for a frame before the capture loop looks at the stop flag again.
const POLL: Duration = Duration::from_millis(100);

/// One captured frame in a buffer allocated once and recycled.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// The RGB image.
    pub image: RgbImage,
    /// Capture time on the monotonic clock, ns.
    pub capture_ns: u64,
    /// Arrival time in the capture thread, ns.
    pub arrival_ns: u64,
    /// Frame number since the run began.
    pub seq: u64,
}

impl VideoFrame {
    /// A black frame of `width` x `height`.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            image: RgbImage::new(width, height),
            capture_ns: 0,
            arrival_ns: 0,
            seq: 0,
        }
    }
}

/// What was negotiated with the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFormat {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Pixel format as four characters (`YUYV`, `MJPG`, `RGB3`).
    pub fourcc: [u8; 4],
}

/// An open video input.
pub enum VideoInput {
    /// A V4L2 camera.
    V4l2(V4l2Capture),
    /// An ffmpeg child writing raw RGB frames at the source's own rate; a frame's capture time is its arrival (ffmpeg's decoding delay is not seen).
    Ffmpeg(FfmpegChild),
}

impl VideoInput {
    /// Opens `spec` asking for `width` x `height` at `fps` (ffmpeg scales to that size and passes the source's frames through at their own rate).
    pub fn open(
        spec: &VideoSpec,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<(Self, VideoFormat), SourceError> {
        match spec {
            VideoSpec::V4l2(path) => {
                let capture = V4l2Capture::open(path, width, height, fps)?;
                let format = capture.format;
                Ok((Self::V4l2(capture), format))
            }
            VideoSpec::Ffmpeg(input) => {
                let mut cmd = ffmpeg_command(input);
                cmd.args(["-an", "-vf", &format!("scale={width}:{height}")]);
                // No frame-rate conversion: it would hold every frame back until the next one.
                cmd.args(["-fps_mode", "passthrough", "-pix_fmt", "rgb24"]);
                cmd.args(["-f", "rawvideo", "pipe:1"]);
                let child = FfmpegChild::spawn(cmd, &spec.to_string())?;
                Ok((
                    Self::Ffmpeg(child),
                    VideoFormat {
                        width,
                        height,
                        fps,
                        fourcc: *b"RGB3",
                    },
                ))
            }
        }
    }

    /// Fills `frame` with the next frame; `Ok(false)` when none arrived within the poll time.
    fn read(&mut self, frame: &mut VideoFrame) -> Result<bool, SourceError> {
        match self {
            Self::V4l2(capture) => capture.read(frame),
            Self::Ffmpeg(child) => {
                let buf: &mut [u8] = &mut frame.image;
                let mut filled = 0;
                while filled < buf.len() {
                    match child.read(&mut buf[filled..], POLL)? {
                        ReadOutcome::Data(n) => filled += n,
                        ReadOutcome::Idle if filled == 0 => return Ok(false),
                        ReadOutcome::Idle => {}
                    }
                }
                let arrival = now_ns();
                frame.arrival_ns = arrival;
                frame.capture_ns = arrival;
                Ok(true)
            }
        }
    }
}

/// A V4L2 camera streaming through mmap buffers.
pub struct V4l2Capture {
    name: String,
    stream: v4l::io::mmap::Stream<'static>,
    format: VideoFormat,
    // The device stays open as long as its stream.
    _device: v4l::Device,
}

impl V4l2Capture {
    /// Opens `path`, negotiating YUYV (else MJPEG) at the size and rate nearest `width` x `height` at `fps`.
    pub fn open(path: &str, width: u32, height: u32, fps: u32) -> Result<Self, SourceError> {
        let name = format!("v4l2:{path}");
        let fail = |what: &str, e: std::io::Error| SourceError::Open {
            source_name: name.clone(),
            reason: format!("{what}: {e}"),
        };
        if !std::path::Path::new(path).exists() {
            return Err(SourceError::Open {
                source_name: name,
                reason: "no such device (is the camera plugged in and its driver loaded?)".into(),
            });
        }
        let device = v4l::Device::with_path(path).map_err(|e| fail("cannot open the device", e))?;
        let mut chosen = None;
        for fourcc in [*b"YUYV", *b"MJPG"] {
            let mut fmt = device.format().map_err(|e| fail("reading the format", e))?;
            fmt.width = width;
            fmt.height = height;
            fmt.fourcc = v4l::FourCC::new(&fourcc);
            let got = device
                .set_format(&fmt)
                .map_err(|e| fail("setting the format", e))?;
            if got.fourcc.repr == fourcc {
                chosen = Some((got, fourcc));
                break;
            }
        }
        let Some((got, fourcc)) = chosen else {
            return Err(SourceError::Open {
                source_name: name,
                reason: "the camera offers neither YUYV nor MJPEG".into(),
            });
        };
        let params = device
            .set_params(&v4l::video::capture::Parameters::with_fps(fps))
            .map_err(|e| fail("setting the frame rate", e))?;
        let got_fps = params
            .interval
            .denominator
            .checked_div(params.interval.numerator)
            .unwrap_or(fps);
        let mut stream =
            v4l::io::mmap::Stream::with_buffers(&device, v4l::buffer::Type::VideoCapture, 4)
                .map_err(|e| fail("mapping capture buffers", e))?;
        stream.set_timeout(POLL);
        let format = VideoFormat {
            width: got.width,
            height: got.height,
            fps: got_fps,
            fourcc,
        };
        info!(
            device = %name,
            width = format.width,
            height = format.height,
            fps = format.fps,
            format = %String::from_utf8_lossy(&fourcc),
            "camera negotiated"
        );
        Ok(Self {
            name,
            stream,
            format,
            _device: device,
        })
    }

    /// The negotiated format.
    pub fn format(&self) -> VideoFormat {
        self.format
    }

    fn read(&mut self, frame: &mut VideoFrame) -> Result<bool, SourceError> {
        let (w, h) = (self.format.width as usize, self.format.height as usize);
        let (buf, meta) = match self.stream.next() {
            Ok(next) => next,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(false),
            Err(e) => {
                return Err(SourceError::Read {
                    source_name: self.name.clone(),
                    reason: e.to_string(),
                });
            }
        };
        let used = (meta.bytesused as usize).min(buf.len());
        let dst: &mut [u8] = &mut frame.image;
        let converted = if self.format.fourcc == *b"YUYV" {
            yuyv_to_rgb(&buf[..used], w, h, dst)
        } else {
            mjpeg_to_rgb(&buf[..used], w, h, dst)
        };
        converted.map_err(|e| SourceError::Read {
            source_name: self.name.clone(),
            reason: e.to_string(),
        })?;
        let arrival = now_ns();
        let stamp = meta.timestamp.sec as u64 * 1_000_000_000 + meta.timestamp.usec as u64 * 1_000;
        frame.arrival_ns = arrival;
        // Drivers stamp on CLOCK_MONOTONIC; anything else (or none) falls back to arrival.
        frame.capture_ns = if stamp > 0 && stamp <= arrival {
            stamp
        } else {
            arrival
        };
        Ok(true)
    }
}

/// The video capture thread: fills free frames and queues them until stopped; reopens `spec` with backoff when it fails.
pub fn capture_video(
    spec: &VideoSpec,
    mut input: VideoInput,
    request: VideoFormat,
    producer: &mut Producer<'_, Box<VideoFrame>>,
    free: &mut Consumer<'_, Box<VideoFrame>>,
    shared: &Shared,
) {
    let mut seq: u64 = 0;
    let mut backoff = Backoff::new();
    let mut spare: Option<Box<VideoFrame>> = None;
    loop {
        let mut failure = None;
        while !shared.stopping() {
            let Some(mut frame) = spare.take().or_else(|| free.dequeue()) else {
                // Inference holds every buffer: wait for one to come back (the source buffers meanwhile).
                shared.wait_for_buffer();
                continue;
            };
            match input.read(&mut frame) {
                Ok(true) => {
                    backoff.reset();
                    frame.seq = seq;
                    seq += 1;
                    shared
                        .counters
                        .frames_captured
                        .fetch_add(1, Ordering::Relaxed);
                    if let Err(back) = producer.enqueue(frame) {
                        shared
                            .counters
                            .frames_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        spare = Some(back);
                    }
                    shared.wake();
                }
                Ok(false) => spare = Some(frame),
                Err(e) => {
                    spare = Some(frame);
                    failure = Some(e);
                    break;
                }
            }
        }
        let reopened = backoff.reopen(
            shared,
            "video",
            spec,
            failure,
            &shared.counters.video_reopens,
            || {
                let (i, f) = VideoInput::open(spec, request.width, request.height, request.fps)?;
                if (f.width, f.height) == (request.width, request.height) {
                    return Ok(Some(i));
                }
                warn!(
                    source = %spec,
                    width = f.width,
                    height = f.height,
                    "video source came back at another size; waiting"
                );
                Ok(None)
            },
        );
        match reopened {
            Some(i) => input = i,
            None => return,
        }
    }
}
