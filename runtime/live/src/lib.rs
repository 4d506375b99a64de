//! cavsync-live: camera and microphone in, tracked sound sources out, in real time.
//!
//! Sources ([`source`]): ALSA microphones and V4L2 cameras through their kernel interfaces,
//! or anything ffmpeg reads (files, RTSP). Capture threads ([`audio`], [`video`]) stamp
//! everything on one monotonic clock ([`clock`]) and hand it to inference through bounded
//! lock-free queues; the [`pipeline`] cuts each frame's audio segment from a streaming fbank,
//! runs both encoders, localizes, tracks, and writes one JSON line per frame to every
//! [`output`] and the live page ([`http`]). Latency per stage is kept in [`stats`]; the
//! steady state's allocations are recycled by [`pool`].

pub mod audio;
pub mod child;
pub mod clock;
pub mod http;
pub mod output;
pub mod pipeline;
pub mod pixel;
pub mod pool;
pub mod source;
pub mod stats;
pub mod video;
