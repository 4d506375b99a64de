//! ALSA capture through the real `alsa` crate and libasound, from a file: libasound's own `file` plugin (with a `null` slave) plays a known raw stereo recording as a capture device.
//!
//! The null slave does not pace in real time and repeats stale data after the end of the
//! file, so the test reads exactly the file's length.

use cavsync_core::preprocess::audio::StreamResampler;
use cavsync_live::audio::{AlsaCapture, AudioFormat, AudioInput};
use cavsync_live::source::AudioSpec;

/// Frames in the recording: one second at 48 kHz.
const FRAMES: usize = 48_000;

fn left(i: usize) -> i16 {
    ((i % 200) as i32 * 100 - 10_000) as i16
}

fn right(i: usize) -> i16 {
    (-(i32::from(left(i))) / 2) as i16
}

#[test]
fn alsa_capture_reads_a_device_at_its_rate_and_mixes_to_mono() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("in.raw");
    let bytes: Vec<u8> = (0..FRAMES)
        .flat_map(|i| {
            let mut frame = left(i).to_le_bytes().to_vec();
            frame.extend(right(i).to_le_bytes());
            frame
        })
        .collect();
    std::fs::write(&raw, bytes).unwrap();
    std::fs::create_dir_all(dir.path().join("alsa")).unwrap();
    std::fs::write(
        dir.path().join("alsa/asoundrc"),
        format!(
            "pcm.filemic {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n",
            raw.display()
        ),
    )
    .unwrap();
    // SAFETY: this test binary has this one test, and nothing else reads the environment concurrently.
    unsafe { std::env::set_var("XDG_CONFIG_HOME", dir.path()) };

    let err = AlsaCapture::open("cavsync_no_such_pcm", 48_000, 2)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("alsa:cavsync_no_such_pcm"), "{err}");

    let mut capture = AlsaCapture::open("filemic", 48_000, 2).unwrap();
    assert_eq!(
        capture.format(),
        AudioFormat {
            rate: 48_000,
            channels: 2
        }
    );
    let mut mono = vec![0.0f32; FRAMES];
    let mut got = 0;
    let mut idle = 0;
    while got < FRAMES {
        let n = capture.read_mono(&mut mono[got..]).unwrap();
        if n == 0 {
            idle += 1;
            assert!(idle < 50, "the device stopped delivering at {got} frames");
        }
        got += n;
    }
    let worst = (0..FRAMES)
        .map(|i| {
            let expected = (f32::from(left(i)) + f32::from(right(i))) / (2.0 * 32768.0);
            (mono[i] - expected).abs()
        })
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-7, "mono mix differs by {worst}");
    assert_eq!(capture.xruns(), 0);

    // What the capture thread does next: the device rate down to the model's.
    let mut resampler = StreamResampler::new(48_000, 16_000).unwrap();
    let mut at_16k = 0;
    resampler.push(&mono, |s| at_16k += s.len()).unwrap();
    assert_eq!(at_16k, 16_000);

    // The source spec path opens the same device.
    let (_, format) =
        AudioInput::open(&AudioSpec::Alsa("filemic".into()), 44_100, 2, 16_000).unwrap();
    assert_eq!(format.channels, 2);
    assert!(format.rate > 0);
}
