//! Board profiles for cavsync deployments (Pi 4, Pi 5, Jetson Orin, x86 dev box) and their validation.

use serde::{Deserialize, Serialize};

use cavsync_core::model::Precision;
use cavsync_core::preprocess::audio::MAX_SAMPLE_RATE;
use cavsync_core::track::TrackerConfig;

/// Longest camera side accepted, in pixels.
pub const MAX_CAMERA_SIDE: u32 = 8192;
/// Most camera pixels per frame accepted (16 MP; the frame pool is allocated at start).
pub const MAX_CAMERA_PIXELS: u64 = 16 * 1024 * 1024;
/// Highest camera frame rate accepted.
pub const MAX_CAMERA_FPS: u32 = 240;
/// Most microphone channels accepted.
pub const MAX_MIC_CHANNELS: u16 = 64;

/// Errors raised while reading or validating a board profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The TOML could not be parsed into a profile (unknown fields are refused).
    #[error("{source_name}: invalid board profile: {message}")]
    Parse {
        /// File name or other label of the TOML source.
        source_name: String,
        /// What the parser reported (names the field).
        message: String,
    },
    /// A field holds a value the board cannot support.
    #[error("{source_name}: field `{field}`: {problem}")]
    Invalid {
        /// File name or other label of the TOML source.
        source_name: String,
        /// The offending field.
        field: &'static str,
        /// What was expected.
        problem: String,
    },
    /// No bundled profile has the requested name.
    #[error("no bundled board profile named `{0}` (known: pi4, pi5, jetson-orin, x86-dev)")]
    Unknown(String),
}

/// CPU architecture of a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// 64-bit Arm.
    Aarch64,
    /// 64-bit x86.
    X86_64,
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// CPU kernels only.
    Cpu,
    /// CUDA through tract-cuda.
    Cuda,
}

/// CPU capabilities that select tract's fast kernels.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeatures {
    /// Arm half-precision arithmetic (`asimdhp`): f16 kernels.
    #[serde(default)]
    pub asimdhp: bool,
    /// Arm int8 dot product (`asimddp`, SDOT): int8 kernels.
    #[serde(default)]
    pub asimddp: bool,
    /// x86 AVX-512F.
    #[serde(default)]
    pub avx512f: bool,
}

/// Camera capture settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// V4L2 device node.
    pub device: String,
    /// Capture width in pixels.
    pub width: u32,
    /// Capture height in pixels.
    pub height: u32,
    /// Capture frame rate.
    pub fps: u32,
}

/// Microphone capture settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MicrophoneConfig {
    /// ALSA device name.
    pub device: String,
    /// Capture sample rate in Hz (resampled to 16 kHz).
    pub sample_rate: u32,
    /// Capture channels (mixed down to mono).
    pub channels: u16,
}

/// A board profile: hardware facts and the runtime settings chosen for it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Short identifier (`pi5`).
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// CPU architecture.
    pub arch: Arch,
    /// CPU cores available to the runtime.
    pub cores: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// CPU capabilities.
    pub cpu_features: CpuFeatures,
    /// Inference device.
    pub accelerator: Accelerator,
    /// Bundle precision to deploy.
    pub precision: Precision,
    /// Inference threads.
    pub threads: u32,
    /// Camera settings.
    pub camera: CameraConfig,
    /// Microphone settings.
    pub microphone: MicrophoneConfig,
    /// Bundle directory the live runtime loads when none is given (relative paths from the working directory).
    #[serde(default)]
    pub bundle: Option<String>,
    /// How live tracking associates, smooths and confirms sources.
    #[serde(default)]
    pub tracker: TrackerConfig,
}

/// `over` laid on `base`: tables merge key by key, anything else replaces.
fn merge(mut base: toml::Table, over: toml::Table) -> toml::Table {
    for (key, value) in over {
        let merged = match (base.remove(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => toml::Value::Table(merge(b, o)),
            (_, v) => v,
        };
        base.insert(key, merged);
    }
    base
}

/// The bundled profiles, by name.
const BUNDLED: [(&str, &str); 4] = [
    ("pi4", include_str!("../profiles/pi4.toml")),
    ("pi5", include_str!("../profiles/pi5.toml")),
    ("jetson-orin", include_str!("../profiles/jetson-orin.toml")),
    ("x86-dev", include_str!("../profiles/x86-dev.toml")),
];

impl BoardProfile {
    /// Parse and validate a profile from TOML text; `source_name` labels errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, ProfileError> {
        let profile: Self = toml::from_str(text).map_err(|e| ProfileError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        profile.validate(source_name)?;
        Ok(profile)
    }

    /// A profile with the fields of TOML `overrides` (any subset, tables merged key by key) laid over `self`, then validated; `source_name` labels errors.
    pub fn with_overrides(&self, overrides: &str, source_name: &str) -> Result<Self, ProfileError> {
        let parse_err = |message: String| ProfileError::Parse {
            source_name: source_name.to_string(),
            message,
        };
        let over: toml::Table = toml::from_str(overrides).map_err(|e| parse_err(e.to_string()))?;
        let base = toml::Table::try_from(self).map_err(|e| parse_err(e.to_string()))?;
        let merged = merge(base, over);
        let profile: Self = merged
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        profile.validate(source_name)?;
        Ok(profile)
    }

    /// Read and validate a profile file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ProfileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Parse {
            source_name: name.clone(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, &name)
    }

    /// One of the bundled profiles (pi4, pi5, jetson-orin, x86-dev).
    pub fn bundled(name: &str) -> Result<Self, ProfileError> {
        let (_, text) = BUNDLED
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ProfileError::Unknown(name.to_string()))?;
        Self::from_toml(text, &format!("bundled profile {name}"))
    }

    /// Check that the settings are consistent with the hardware.
    pub fn validate(&self, source_name: &str) -> Result<(), ProfileError> {
        let invalid = |field, problem: String| {
            Err(ProfileError::Invalid {
                source_name: source_name.to_string(),
                field,
                problem,
            })
        };
        if self.cores == 0 {
            return invalid("cores", "must be at least 1".into());
        }
        if self.threads == 0 || self.threads > self.cores {
            return invalid(
                "threads",
                format!(
                    "{} is outside 1..={} (the board's cores)",
                    self.threads, self.cores
                ),
            );
        }
        if self.precision == Precision::F16
            && self.accelerator == Accelerator::Cpu
            && !(self.arch == Arch::Aarch64 && self.cpu_features.asimdhp)
        {
            return invalid(
                "precision",
                "f16 on the CPU needs an aarch64 core with asimdhp (Pi 5, Orin); use f32 or int8"
                    .into(),
            );
        }
        let cam = &self.camera;
        if cam.width == 0 || cam.height == 0 || cam.fps == 0 {
            return invalid("camera", "width, height and fps must be positive".into());
        }
        if cam.width.max(cam.height) > MAX_CAMERA_SIDE
            || u64::from(cam.width) * u64::from(cam.height) > MAX_CAMERA_PIXELS
        {
            return invalid(
                "camera",
                format!(
                    "{}x{} is larger than this runtime captures (expected sides up to {MAX_CAMERA_SIDE} pixels and at most {MAX_CAMERA_PIXELS} pixels)",
                    cam.width, cam.height
                ),
            );
        }
        if cam.fps > MAX_CAMERA_FPS {
            return invalid(
                "camera",
                format!("fps {} is above {MAX_CAMERA_FPS}", cam.fps),
            );
        }
        if cam.width.min(cam.height) < 224 {
            return invalid(
                "camera",
                format!(
                    "{}x{} is smaller than the 224-pixel model input",
                    cam.width, cam.height
                ),
            );
        }
        if let Err(e) = self.tracker.validate() {
            return invalid("tracker", e.to_string());
        }
        let mic = &self.microphone;
        if mic.sample_rate < 16_000 {
            return invalid(
                "microphone.sample_rate",
                format!("{} Hz is below the model's 16000 Hz", mic.sample_rate),
            );
        }
        if mic.sample_rate > MAX_SAMPLE_RATE {
            return invalid(
                "microphone.sample_rate",
                format!("{} Hz is above {MAX_SAMPLE_RATE} Hz", mic.sample_rate),
            );
        }
        if mic.channels == 0 || mic.channels > MAX_MIC_CHANNELS {
            return invalid(
                "microphone.channels",
                format!("{}; expected 1 to {MAX_MIC_CHANNELS}", mic.channels),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_profiles_are_valid() {
        for (name, _) in BUNDLED {
            let p = BoardProfile::bundled(name).unwrap();
            assert_eq!(p.name, name);
        }
        assert!(matches!(
            BoardProfile::bundled("nano"),
            Err(ProfileError::Unknown(_))
        ));
    }

    #[test]
    fn overrides_replace_only_the_fields_they_name() {
        let base = BoardProfile::bundled("pi5").unwrap();
        let p = base
            .with_overrides(
                "threads = 2\nbundle = \"b\"\n[camera]\nfps = 15\n[tracker]\nhold = 5",
                "o.toml",
            )
            .unwrap();
        assert_eq!((p.threads, p.camera.fps, p.camera.width), (2, 15, 640));
        assert_eq!((p.bundle.as_deref(), p.tracker.hold), (Some("b"), 5));
        assert_eq!(p.microphone, base.microphone);
        let err = base
            .with_overrides("[camera]\nzoom = 2", "o.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("o.toml") && err.contains("zoom"), "{err}");
        let err = base
            .with_overrides("threads = 64", "o.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("o.toml") && err.contains("threads"), "{err}");
        let err = base
            .with_overrides("[tracker]\nsmoothing = 2.0", "o.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tracker") && err.contains("smoothing"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = BUNDLED[1].1.replace("cores = 4", "cores = 4\nturbo = true");
        let err = BoardProfile::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("turbo"), "{err}");
    }

    #[test]
    fn pi4_cannot_run_f16_and_threads_are_bounded() {
        let text = BUNDLED[0]
            .1
            .replace("precision = \"int8\"", "precision = \"f16\"");
        let err = BoardProfile::from_toml(&text, "pi4.toml").unwrap_err();
        assert!(
            matches!(
                err,
                ProfileError::Invalid {
                    field: "precision",
                    ..
                }
            ),
            "{err}"
        );
        let text = BUNDLED[0].1.replace("threads = 4", "threads = 9");
        let err = BoardProfile::from_toml(&text, "pi4.toml").unwrap_err();
        assert!(
            matches!(
                err,
                ProfileError::Invalid {
                    field: "threads",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn low_sample_rate_and_tiny_camera_are_refused() {
        let text = BUNDLED[1]
            .1
            .replace("sample_rate = 48000", "sample_rate = 8000");
        let err = BoardProfile::from_toml(&text, "pi5.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("microphone.sample_rate"), "{err}");
        let text = BUNDLED[1].1.replace("height = 480", "height = 120");
        let err = BoardProfile::from_toml(&text, "pi5.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("camera"), "{err}");
    }

    #[test]
    fn huge_camera_and_microphone_are_refused() {
        let base = BoardProfile::bundled("pi5").unwrap();
        for (over, field) in [
            ("[camera]\nwidth = 60000\nheight = 60000", "`camera`"),
            ("[camera]\nfps = 100000", "`camera`"),
            (
                "[microphone]\nsample_rate = 4000000000",
                "`microphone.sample_rate`",
            ),
            ("[microphone]\nchannels = 65535", "`microphone.channels`"),
        ] {
            let err = base.with_overrides(over, "c.toml").unwrap_err().to_string();
            assert!(err.contains(field), "{over}: {err}");
        }
    }
}
