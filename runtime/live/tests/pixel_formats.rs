//! Camera pixel formats on real buffers: a demo frame encoded by ffmpeg as packed YUYV (BT.601, limited range, what UVC webcams send) and as MJPEG, converted by cavsync, against ffmpeg's own RGB of the same frame.
//!
//! Needs the `ffmpeg` executable (CI installs it); without it the test says so and passes.

use std::path::Path;
use std::process::Command;

use cavsync_live::pixel::{mjpeg_to_rgb, yuyv_to_rgb};

/// ffmpeg's output of the demo frame with `args` (raw bytes on stdout), or none without ffmpeg.
fn ffmpeg(frame: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
        .arg(frame)
        .args(args)
        .arg("pipe:1")
        .output()
        .ok()?;
    assert!(out.status.success(), "ffmpeg {args:?}");
    Some(out.stdout)
}

/// Mean and largest absolute difference between two RGB buffers.
fn differences(a: &[u8], b: &[u8]) -> (f64, u8) {
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    (total as f64 / a.len() as f64, worst)
}

#[test]
fn yuyv_and_mjpeg_buffers_from_ffmpeg_convert_like_ffmpeg() {
    let frame = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/demo/clip/frames/frame_0/s2001_00000.jpg");
    let scale = ["-vf", "scale=320:240:flags=neighbor"];
    let rgb_args = [&scale[..], &["-pix_fmt", "rgb24", "-f", "rawvideo"]].concat();
    let Some(reference) = ffmpeg(&frame, &rgb_args) else {
        eprintln!("ffmpeg not installed: the pixel-format test did not run");
        return;
    };
    let (w, h) = (320, 240);
    assert_eq!(reference.len(), w * h * 3);

    // YUYV from the RGB reference, as a camera would send it (chroma shared by pixel pairs).
    let yuyv_args = [&scale[..], &["-pix_fmt", "yuyv422", "-f", "rawvideo"]].concat();
    let yuyv = ffmpeg(&frame, &yuyv_args).unwrap();
    assert_eq!(yuyv.len(), w * h * 2);
    let mut rgb = vec![0u8; w * h * 3];
    yuyv_to_rgb(&yuyv, w, h, &mut rgb).unwrap();
    let (mean, worst) = differences(&rgb, &reference);
    eprintln!("YUYV: mean abs difference {mean:.2} levels, worst {worst}");
    // Chroma is halved horizontally, so edges differ; the bulk must agree within rounding.
    assert!(mean < 3.0, "mean {mean}");

    let mjpeg_args = [&scale[..], &["-c:v", "mjpeg", "-q:v", "2", "-f", "mjpeg"]].concat();
    let jpeg = ffmpeg(&frame, &mjpeg_args).unwrap();
    mjpeg_to_rgb(&jpeg, w, h, &mut rgb).unwrap();
    let (mean, worst) = differences(&rgb, &reference);
    eprintln!("MJPEG: mean abs difference {mean:.2} levels, worst {worst}");
    assert!(mean < 4.0, "mean {mean}");
    assert!(yuyv_to_rgb(&yuyv[..1000], w, h, &mut rgb).is_err());
}
