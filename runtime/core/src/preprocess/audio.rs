//! Reading WAV files into mono float samples and resampling them to the model's 16 kHz.
//!
//! Integer PCM is scaled to [-1, 1) as torchaudio's `load` does (divide by 2^(bits-1)),
//! channels are mixed down by their mean (as `ffmpeg -ac 1`), and resampling is band-limited
//! and time-aligned (no leading delay).

use std::path::{Path, PathBuf};

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use super::hygiene::{self, AudioFault};

/// Sample rate every model input uses.
pub const SAMPLE_RATE: u32 = 16_000;

/// Highest sample rate accepted, in Hz (the resampler's FFT block grows with awkward rates).
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Lowest sample rate a WAV header may give, in Hz (below it no speech or sound band survives).
pub const MIN_WAV_SAMPLE_RATE: u32 = 4_000;

/// Input frames per FFT block the resampler aims for (larger blocks give a sharper anti-aliasing filter).
const RESAMPLER_BLOCK: usize = 1024;

/// Why audio could not be loaded or resampled.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read audio file: {source}")]
    Io {
        /// File being read.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not a well-formed WAV file (includes a header announcing zero channels).
    #[error(
        "{path}: not a valid WAV file: {reason} (expected a RIFF/WAVE file with PCM or float samples)"
    )]
    NotWav {
        /// File being read.
        path: PathBuf,
        /// What the WAV parser objected to.
        reason: String,
    },
    /// The WAV file stores samples in an encoding this reader does not handle.
    #[error(
        "{path}: unsupported WAV sample format: {format} (expected 16/24/32-bit PCM or 32-bit float)"
    )]
    UnsupportedFormat {
        /// File being read.
        path: PathBuf,
        /// The encoding found, e.g. "8-bit PCM".
        format: String,
    },
    /// The WAV file holds no samples.
    #[error("{path}: WAV file contains no audio samples (expected at least one frame)")]
    Empty {
        /// File being read.
        path: PathBuf,
    },
    /// The WAV header announces a sample rate outside [`MIN_WAV_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`] Hz.
    #[error(
        "{path}: WAV header gives a sample rate of {rate} Hz (expected {MIN_WAV_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)"
    )]
    SampleRate {
        /// File being read.
        path: PathBuf,
        /// The rate found in the header.
        rate: u32,
    },
    /// The samples hold a stretch no working microphone gives (see [`hygiene::check`]).
    #[error(
        "{path}: {fault} from {start_s:.2} s for {length_s:.2} s ({windows} of {total} windows of 0.1 s); expected finite samples within full scale that are not all one value"
    )]
    Fault {
        /// File being read.
        path: PathBuf,
        /// What is wrong.
        fault: AudioFault,
        /// Start of the first faulty stretch, seconds.
        start_s: f64,
        /// Its length, seconds.
        length_s: f64,
        /// Faulty windows of that kind.
        windows: usize,
        /// Windows in the file.
        total: usize,
    },
    /// A sample rate passed to [`resample`] is outside 1..=[`MAX_SAMPLE_RATE`] Hz, or the resampler failed.
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Resample {
        /// Source sample rate in Hz.
        from: u32,
        /// Target sample rate in Hz.
        to: u32,
        /// Why it failed.
        reason: String,
    },
}

/// Mono audio with its sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    /// Samples in [-1, 1].
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

/// Reads a PCM (16/24/32-bit) or 32-bit float WAV file, mixed down to mono and scaled to [-1, 1); refuses audio no working microphone gives ([`hygiene::check`] on the interleaved samples, so one dead or clipped channel is not hidden by the mix).
pub fn read_wav_mono(path: &Path) -> Result<Waveform, AudioError> {
    read_wav(path, true)
}

/// [`read_wav_mono`] without the microphone checks: the samples as they are, clipped or silent, for fidelity references made from such files on purpose.
pub fn read_wav_mono_as_is(path: &Path) -> Result<Waveform, AudioError> {
    read_wav(path, false)
}

/// Reads a WAV file as mono samples, with the microphone checks where `check`.
fn read_wav(path: &Path, check: bool) -> Result<Waveform, AudioError> {
    let file = std::fs::File::open(path).map_err(|source| AudioError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader =
        hound::WavReader::new(std::io::BufReader::new(file)).map_err(|e| wav_error(path, e))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if spec.sample_rate < MIN_WAV_SAMPLE_RATE || !valid_rate(spec.sample_rate) {
        return Err(AudioError::SampleRate {
            path: path.to_owned(),
            rate: spec.sample_rate,
        });
    }
    check_claimed_length(&reader, path)?;
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => read_scaled::<i16, _>(reader, path, 1.0 / 32_768.0)?,
        (hound::SampleFormat::Int, 24) => read_scaled::<i32, _>(reader, path, 1.0 / 8_388_608.0)?,
        (hound::SampleFormat::Int, 32) => {
            read_scaled::<i32, _>(reader, path, 1.0 / 2_147_483_648.0)?
        }
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| wav_error(path, e))?,
        (format, bits) => {
            let kind = match format {
                hound::SampleFormat::Int => "PCM",
                hound::SampleFormat::Float => "float",
            };
            return Err(AudioError::UnsupportedFormat {
                path: path.to_owned(),
                format: format!("{bits}-bit {kind}"),
            });
        }
    };
    if interleaved.is_empty() {
        return Err(AudioError::Empty {
            path: path.to_owned(),
        });
    }
    let stream_rate = spec
        .sample_rate
        .saturating_mul(u32::from(spec.channels.max(1)));
    if let Some(r) = check
        .then(|| hygiene::check(&interleaved, stream_rate).err())
        .flatten()
    {
        let (start_s, length_s) = r.at_s(stream_rate);
        return Err(AudioError::Fault {
            path: path.to_owned(),
            fault: r.span.fault,
            start_s,
            length_s,
            windows: r.windows,
            total: r.total,
        });
    }
    let samples = if channels <= 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(channels)
            .map(|frame| {
                (frame.iter().map(|&x| f64::from(x)).sum::<f64>() / channels as f64) as f32
            })
            .collect()
    };
    Ok(Waveform {
        samples,
        sample_rate: spec.sample_rate,
    })
}

/// Refuses a WAV whose data chunk claims more bytes than the whole file holds (truncated, or a corrupt size), before any sample is read.
fn check_claimed_length<R: std::io::Read>(
    reader: &hound::WavReader<R>,
    path: &Path,
) -> Result<(), AudioError> {
    let file_bytes = std::fs::metadata(path)
        .map_err(|source| AudioError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    let claimed = u64::from(reader.len()) * u64::from(reader.spec().bits_per_sample.div_ceil(8));
    if claimed > file_bytes {
        return Err(AudioError::NotWav {
            path: path.to_owned(),
            reason: format!(
                "its data chunk claims {claimed} bytes of samples but the file is {file_bytes} bytes long (truncated or corrupt)"
            ),
        });
    }
    Ok(())
}

/// Reads every integer sample and scales it to float by `scale`.
fn read_scaled<S, R>(
    reader: hound::WavReader<R>,
    path: &Path,
    scale: f64,
) -> Result<Vec<f32>, AudioError>
where
    S: hound::Sample + Into<i32>,
    R: std::io::Read,
{
    reader
        .into_samples::<S>()
        .map(|s| s.map(|v| (f64::from(v.into()) * scale) as f32))
        .collect::<Result<_, _>>()
        .map_err(|e| wav_error(path, e))
}

/// Maps a hound error to the matching [`AudioError`].
fn wav_error(path: &Path, err: hound::Error) -> AudioError {
    let path = path.to_owned();
    match err {
        // The file is open, so a read error means it ended before its header or data did.
        hound::Error::IoError(source) => AudioError::NotWav {
            path,
            reason: format!("the file ends early, empty or truncated ({source})"),
        },
        hound::Error::Unsupported => AudioError::UnsupportedFormat {
            path,
            format: "a WAVE format tag other than PCM or IEEE float".to_owned(),
        },
        other => AudioError::NotWav {
            path,
            reason: other.to_string(),
        },
    }
}

/// Resamples mono samples from `from` Hz to `to` Hz: band-limited, time-aligned, `round(n * to / from)` samples long.
///
/// Uses rubato's synchronous FFT resampler (Blackman-Harris anti-aliasing window, f64
/// arithmetic) with its processing delay trimmed. The FFT block is chosen as an even number
/// of the smallest blocks the rate pair allows, so that the delay is a whole number of
/// samples on both sides and trimming it leaves no fractional time shift.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let fail = |reason: String| AudioError::Resample { from, to, reason };
    if !valid_rate(from) || !valid_rate(to) {
        return Err(fail(format!(
            "sample rates must be 1 to {MAX_SAMPLE_RATE} Hz"
        )));
    }
    let out_len = (samples.len() as u64)
        .checked_mul(u64::from(to))
        .map(|scaled| (scaled + u64::from(from) / 2) / u64::from(from))
        .and_then(|len| usize::try_from(len).ok())
        .ok_or_else(|| fail(format!("{} samples is too long", samples.len())))?;
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    let (from_hz, to_hz) = (from as usize, to as usize);
    let min_block_in = from_hz / gcd(from_hz, to_hz);
    let blocks = RESAMPLER_BLOCK
        .div_ceil(min_block_in)
        .max(2)
        .next_multiple_of(2);
    let mut resampler = Fft::<f64>::new_custom(
        from_hz,
        to_hz,
        blocks * min_block_in,
        1,
        1,
        WindowFunction::BlackmanHarris2,
        FixedSync::Input,
    )
    .map_err(|e| fail(e.to_string()))?;
    let input: Vec<f64> = samples.iter().map(|&x| f64::from(x)).collect();
    let adapter = InterleavedSlice::new(&input, 1, input.len()).map_err(|e| fail(e.to_string()))?;
    let output = resampler
        .process_all(&adapter, input.len(), None)
        .map_err(|e| fail(e.to_string()))?
        .take_data();
    let mut resampled: Vec<f32> = output.iter().take(out_len).map(|&x| x as f32).collect();
    resampled.resize(out_len, 0.0);
    Ok(resampled)
}

/// Whether `rate` is a sample rate this module handles.
fn valid_rate(rate: u32) -> bool {
    (1..=MAX_SAMPLE_RATE).contains(&rate)
}

/// Greatest common divisor.
fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Reads a WAV file as mono samples at [`SAMPLE_RATE`].
pub fn load_wav_16k(path: &Path) -> Result<Vec<f32>, AudioError> {
    let wav = read_wav_mono(path)?;
    resample(&wav.samples, wav.sample_rate, SAMPLE_RATE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sine(rate: u32, freq: f64, amp: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (amp * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()) as f32)
            .collect()
    }

    #[test]
    fn resampling_keeps_amplitude_and_phase() {
        for from in [44_100u32, 48_000, 8_000, 22_050, 32_000] {
            let n = from as usize; // one second
            let input = sine(from, 1000.0, 0.5, n);
            let out = resample(&input, from, SAMPLE_RATE).unwrap();
            assert_eq!(out.len(), 16_000, "{from} Hz");
            let expected = sine(SAMPLE_RATE, 1000.0, 0.5, out.len());
            // Away from the edges (where the input is cut off), the 16 kHz sine is reproduced.
            let max_err = out[1600..14_400]
                .iter()
                .zip(&expected[1600..14_400])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max_err < 1e-5, "{from} Hz -> 16 kHz: max error {max_err}");
        }
    }

    #[test]
    fn resampling_lengths_and_identity() {
        let x = sine(48_000, 440.0, 0.3, 1001);
        assert_eq!(resample(&x, 48_000, 48_000).unwrap(), x);
        // round(1001 / 3) = 334; round(7 * 16000 / 44100) = round(2.54) = 3.
        assert_eq!(resample(&x, 48_000, 16_000).unwrap().len(), 334);
        assert_eq!(resample(&x[..7], 44_100, 16_000).unwrap().len(), 3);
        assert!(resample(&[], 44_100, 16_000).unwrap().is_empty());
        let err = resample(&x, 0, 16_000).unwrap_err();
        assert!(err.to_string().contains("from 0 Hz"), "{err}");
        assert!(resample(&x, 16_000, MAX_SAMPLE_RATE + 1).is_err());
    }

    #[test]
    fn resampling_removes_content_above_the_new_nyquist() {
        // A 12 kHz tone at 48 kHz cannot exist at 16 kHz: it must not alias to 4 kHz.
        let input = sine(48_000, 12_000.0, 0.5, 48_000);
        let out = resample(&input, 48_000, SAMPLE_RATE).unwrap();
        let peak = out[1600..14_400]
            .iter()
            .fold(0.0f32, |m, &v| m.max(v.abs()));
        assert!(peak < 1e-3, "aliased peak {peak}");
    }

    fn write_wav<S: hound::Sample + Copy>(
        path: &Path,
        channels: u16,
        bits: u16,
        format: hound::SampleFormat,
        samples: &[S],
    ) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: 22_050,
            bits_per_sample: bits,
            sample_format: format,
        };
        let mut writer = hound::WavWriter::create(path, spec).unwrap();
        for &s in samples {
            writer.write_sample(s).unwrap();
        }
        writer.finalize().unwrap();
    }

    #[test]
    fn wav_round_trips_scale_like_torchaudio() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");

        write_wav(
            &path,
            1,
            16,
            hound::SampleFormat::Int,
            &[0i16, 16_384, -32_768, 32_767],
        );
        let wav = read_wav_mono(&path).unwrap();
        assert_eq!(wav.sample_rate, 22_050);
        assert_eq!(wav.samples, vec![0.0, 0.5, -1.0, 32_767.0 / 32_768.0]);

        write_wav(
            &path,
            1,
            24,
            hound::SampleFormat::Int,
            &[4_194_304i32, -8_388_608, 8_388_607],
        );
        let wav = read_wav_mono(&path).unwrap();
        assert_eq!(
            wav.samples,
            vec![0.5, -1.0, (8_388_607.0f64 / 8_388_608.0) as f32]
        );

        write_wav(
            &path,
            1,
            32,
            hound::SampleFormat::Int,
            &[1_073_741_824i32, i32::MIN, -536_870_912],
        );
        let wav = read_wav_mono(&path).unwrap();
        assert_eq!(wav.samples, vec![0.5, -1.0, -0.25]);

        write_wav(
            &path,
            1,
            32,
            hound::SampleFormat::Float,
            &[0.25f32, -0.75, 1.0],
        );
        let wav = read_wav_mono(&path).unwrap();
        assert_eq!(wav.samples, vec![0.25, -0.75, 1.0]);
    }

    #[test]
    fn multichannel_is_mixed_down_by_mean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        write_wav(
            &path,
            2,
            16,
            hound::SampleFormat::Int,
            &[16_384i16, 0, -32_768, 16_384],
        );
        assert_eq!(read_wav_mono(&path).unwrap().samples, vec![0.25, -0.25]);

        write_wav(
            &path,
            3,
            32,
            hound::SampleFormat::Float,
            &[0.3f32, 0.6, 0.9, -0.3, -0.3, 0.0],
        );
        let samples = read_wav_mono(&path).unwrap().samples;
        assert_eq!(samples.len(), 2);
        assert!((samples[0] - 0.6).abs() < 1e-7 && (samples[1] + 0.2).abs() < 1e-7);
    }

    #[test]
    fn load_wav_16k_resamples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let tone: Vec<f32> = sine(22_050, 500.0, 0.5, 22_050);
        write_wav(&path, 1, 32, hound::SampleFormat::Float, &tone);
        let out = load_wav_16k(&path).unwrap();
        assert_eq!(out.len(), 16_000);
        let expected = sine(SAMPLE_RATE, 500.0, 0.5, 16_000);
        let max_err = out[1600..14_400]
            .iter()
            .zip(&expected[1600..14_400])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_err < 1e-5, "max error {max_err}");
    }

    #[test]
    fn unsupported_and_invalid_files_are_named() {
        let dir = tempfile::tempdir().unwrap();

        let path = dir.path().join("eight.wav");
        write_wav(&path, 1, 8, hound::SampleFormat::Int, &[0i8, 12, -5]);
        let msg = read_wav_mono(&path).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "{}: unsupported WAV sample format: 8-bit PCM (expected 16/24/32-bit PCM or 32-bit float)",
                path.display()
            )
        );

        let path = dir.path().join("empty.wav");
        write_wav::<i16>(&path, 2, 16, hound::SampleFormat::Int, &[]);
        let err = read_wav_mono(&path).unwrap_err();
        assert!(matches!(err, AudioError::Empty { .. }), "{err}");
        assert!(err.to_string().starts_with(&path.display().to_string()));

        let path = dir.path().join("fast.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 4_000_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        writer.write_sample(1i16).unwrap();
        writer.finalize().unwrap();
        let err = read_wav_mono(&path).unwrap_err();
        assert!(
            matches!(
                err,
                AudioError::SampleRate {
                    rate: 4_000_000,
                    ..
                }
            ),
            "{err}"
        );

        let path = dir.path().join("text.wav");
        std::fs::write(&path, b"this is not a wav file at all").unwrap();
        let err = read_wav_mono(&path).unwrap_err();
        assert!(matches!(err, AudioError::NotWav { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&path.display().to_string()),
            "{err}"
        );

        let path = dir.path().join("claims_more.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        (0..100).for_each(|i| writer.write_sample(i as i16).unwrap());
        writer.finalize().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40..44].copy_from_slice(&0xFFFF_FFF0_u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = read_wav_mono(&path).unwrap_err();
        assert!(err.to_string().contains("claims 4294967280 bytes"), "{err}");
        std::fs::write(&path, &bytes[..30]).unwrap();
        let err = read_wav_mono(&path).unwrap_err();
        assert!(err.to_string().contains("ends early"), "{err}");

        let path = dir.path().join("missing.wav");
        let err = read_wav_mono(&path).unwrap_err();
        assert!(matches!(err, AudioError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing.wav"), "{err}");
        assert!(load_wav_16k(&path).is_err());
    }

    #[test]
    fn broken_microphone_audio_is_refused_naming_file_fault_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let tone: Vec<f32> = (0..22_050).map(|i| 0.3 * (i as f32 * 0.07).sin()).collect();
        let fault_of = |path: &Path| match read_wav_mono(path).unwrap_err() {
            err @ AudioError::Fault { .. } => {
                let text = err.to_string();
                assert!(text.starts_with(&path.display().to_string()), "{text}");
                assert!(text.contains("expected finite samples"), "{text}");
                match err {
                    AudioError::Fault { fault, start_s, .. } => (fault, start_s, text),
                    _ => unreachable!(),
                }
            }
            other => panic!("expected a fault, got {other}"),
        };

        let path = dir.path().join("nan.wav");
        let mut x = tone.clone();
        x[11_100..11_200].fill(f32::NAN);
        write_wav(&path, 1, 32, hound::SampleFormat::Float, &x);
        let (fault, start_s, text) = fault_of(&path);
        assert_eq!(fault, AudioFault::NonFinite);
        assert!((start_s - 11_025.0 / 22_050.0).abs() < 1e-9, "{text}");
        assert!(text.contains("NaN or infinite"), "{text}");

        let path = dir.path().join("silent.wav");
        write_wav(&path, 1, 16, hound::SampleFormat::Int, &[0i16; 22_050]);
        assert_eq!(fault_of(&path).0, AudioFault::Silent);

        let path = dir.path().join("stuck.wav");
        write_wav(&path, 1, 16, hound::SampleFormat::Int, &[-1200i16; 4_410]);
        assert_eq!(fault_of(&path).0, AudioFault::Stuck);

        // Left channel clipped hard, right channel clean: the mix would hide it, the check does not.
        let path = dir.path().join("clipped.wav");
        let stereo: Vec<i16> = (0..22_050)
            .flat_map(|i| {
                let s = (i as f32 * 0.01).sin();
                let left = if s >= 0.0 { i16::MAX } else { i16::MIN };
                [left, (s * 8_000.0) as i16]
            })
            .collect();
        write_wav(&path, 2, 16, hound::SampleFormat::Int, &stereo);
        assert_eq!(fault_of(&path).0, AudioFault::Clipped);

        // A pause of silence inside sound is not a fault.
        let path = dir.path().join("pause.wav");
        let mut x = tone.clone();
        x[4_000..15_000].fill(0.0);
        write_wav(&path, 1, 32, hound::SampleFormat::Float, &x);
        assert_eq!(read_wav_mono(&path).unwrap().samples.len(), 22_050);

        let path = dir.path().join("slow.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 1_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..1_000 {
            writer.write_sample((i % 97) as i16 * 100).unwrap();
        }
        writer.finalize().unwrap();
        let err = read_wav_mono(&path).unwrap_err();
        assert!(
            matches!(err, AudioError::SampleRate { rate: 1_000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("expected 4000 to"), "{err}");
    }
}

/// A streaming resampler for live capture: mono samples in any chunking, resampled samples out; allocation-free after construction.
///
/// Rubato's synchronous FFT resampler on fixed 10 ms input blocks; its output lags its input by
/// [`StreamResampler::delay_samples`] output samples (a constant the caller subtracts from
/// timestamps). With equal rates it passes samples through unchanged.
pub struct StreamResampler {
    from: u32,
    to: u32,
    resampler: Option<Fft<f32>>,
    input: Vec<f32>,
    filled: usize,
    output: Vec<f32>,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        let fail = |reason: String| AudioError::Resample { from, to, reason };
        if !valid_rate(from) || !valid_rate(to) {
            return Err(fail(format!(
                "sample rates must be 1 to {MAX_SAMPLE_RATE} Hz"
            )));
        }
        if from == to {
            return Ok(Self {
                from,
                to,
                resampler: None,
                input: Vec::new(),
                filled: 0,
                output: Vec::new(),
            });
        }
        let (from_hz, to_hz) = (from as usize, to as usize);
        let min_block = from_hz / gcd(from_hz, to_hz);
        let block = (from_hz / 100).div_ceil(min_block).max(1) * min_block;
        let resampler = Fft::<f32>::new_custom(
            from_hz,
            to_hz,
            block,
            1,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| fail(e.to_string()))?;
        let output = vec![0.0; resampler.output_frames_max()];
        Ok(Self {
            from,
            to,
            input: vec![0.0; block],
            filled: 0,
            output,
            resampler: Some(resampler),
        })
    }

    /// Output samples by which the output lags the input.
    pub fn delay_samples(&self) -> usize {
        self.resampler.as_ref().map_or(0, |r| r.output_delay())
    }

    /// Feeds `samples`, calling `emit` with each resampled block as it completes.
    pub fn push(
        &mut self,
        samples: &[f32],
        mut emit: impl FnMut(&[f32]),
    ) -> Result<(), AudioError> {
        let Some(resampler) = self.resampler.as_mut() else {
            emit(samples);
            return Ok(());
        };
        let (from, to) = (self.from, self.to);
        let fail = |reason: String| AudioError::Resample { from, to, reason };
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (self.input.len() - self.filled).min(rest.len());
            self.input[self.filled..self.filled + take].copy_from_slice(&rest[..take]);
            self.filled += take;
            rest = &rest[take..];
            if self.filled == self.input.len() {
                let frames = self.input.len();
                let out_frames = self.output.len();
                let adapter_in = InterleavedSlice::new(&self.input[..], 1, frames)
                    .map_err(|e| fail(e.to_string()))?;
                let mut adapter_out =
                    InterleavedSlice::new_mut(&mut self.output[..], 1, out_frames)
                        .map_err(|e| fail(e.to_string()))?;
                let (_, written) = resampler
                    .process_into_buffer(&adapter_in, &mut adapter_out, None)
                    .map_err(|e| fail(e.to_string()))?;
                emit(&self.output[..written]);
                self.filled = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn streaming_resampler_matches_the_rate_and_keeps_a_tone() {
        let tone: Vec<f32> = (0..48_000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48_000.0).sin())
            .collect();
        let mut r = StreamResampler::new(48_000, 16_000).unwrap();
        let mut out = Vec::new();
        for piece in tone.chunks(333) {
            r.push(piece, |s| out.extend_from_slice(s)).unwrap();
        }
        assert_eq!(out.len(), 16_000);
        let d = r.delay_samples();
        // After the delay, output sample n is the tone at n / 16 kHz.
        let worst = (d + 100..15_000)
            .map(|n| {
                let t = (n - d) as f32 / 16_000.0;
                (out[n] - (2.0 * std::f32::consts::PI * 440.0 * t).sin()).abs()
            })
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "worst {worst}, delay {d}");
        let mut same = StreamResampler::new(16_000, 16_000).unwrap();
        let mut passed = Vec::new();
        same.push(&tone[..10], |s| passed.extend_from_slice(s))
            .unwrap();
        assert_eq!(passed, tone[..10]);
        assert!(StreamResampler::new(0, 16_000).is_err());
    }
}
