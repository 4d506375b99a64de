//! The model vocabulary every crate shares: numeric precision, checkpoint layout, modality.

use serde::{Deserialize, Serialize};

/// A name that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not a {what} (expected one of: {expected})")]
pub struct UnknownName {
    /// What kind of name was expected.
    pub what: &'static str,
    /// The name given.
    pub found: String,
    /// The accepted names, comma-separated.
    pub expected: &'static str,
}

/// Numeric precision of a model bundle's graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Float32 weights and arithmetic.
    F32,
    /// Float16 weights and arithmetic; inputs and outputs stay float32.
    F16,
    /// Int8 weights and activations (integer matmuls); inputs and outputs stay float32.
    Int8,
}

impl Precision {
    /// Every precision, in the order of their names.
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::Int8];

    /// The name used in manifests, profiles and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
        }
    }

    /// Where bundles of this precision are the right choice, and how each device computes them.
    pub fn guidance(self) -> &'static str {
        match self {
            Self::F32 => {
                "the reference: every device computes it as written; the choice where accuracy matters more than speed"
            }
            Self::F16 => {
                "half of f32's memory; computed in half precision by tract-cuda (Jetson Orin's GPU, the Jetson profile's choice) and by Arm cores with fp16 arithmetic (Raspberry Pi 5's Cortex-A76, Jetson Orin's A78AE), each product summed over at most 128 terms in half precision and those sums added in f32; a Raspberry Pi 4 (Cortex-A72, no fp16) and x86 compute it in f32 from the f16 weights, no faster than f32, so use int8 or f32 there"
            }
            Self::Int8 => {
                "a quarter of f32's memory; integer kernels on x86 (AVX2, AVX-512 VNNI) and on Arm (SDOT on Raspberry Pi 5 and Jetson Orin, SMLAL on Raspberry Pi 4): the Raspberry Pi profiles' choice; tract-cuda has no integer products, so run int8 bundles on the CPU"
            }
        }
    }
}

/// Which family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// CAV-MAE Sync: learned global tokens prepended to each modality.
    Sync,
    /// Original CAV-MAE: no global tokens; the global embedding is the mean of the final tokens.
    Plain,
}

impl Layout {
    /// Every layout, in the order of their names.
    pub const ALL: [Self; 2] = [Self::Sync, Self::Plain];

    /// The name used in manifests (`sync` or `plain`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Plain => "plain",
        }
    }

    /// A sentence-length description for people.
    pub fn description(self) -> &'static str {
        match self {
            Self::Sync => "CAV-MAE Sync (global tokens)",
            Self::Plain => "original CAV-MAE (no global tokens)",
        }
    }
}

/// Which encoder: audio or visual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// The audio encoder.
    Audio,
    /// The visual encoder.
    Visual,
}

impl Modality {
    /// Both modalities, audio first.
    pub const ALL: [Self; 2] = [Self::Audio, Self::Visual];

    /// The lower-case name (`audio` or `visual`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Visual => "visual",
        }
    }
}

/// Display and FromStr from a type's `as_str` and `ALL`, with an [`UnknownName`] error.
macro_rules! named {
    ($ty:ty, $what:literal, $expected:literal) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::model::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::model::UnknownName {
                        what: $what,
                        found: s.to_string(),
                        expected: $expected,
                    })
            }
        }
    };
}

pub(crate) use named;

named!(Precision, "precision", "f32, f16, int8");
named!(Layout, "layout", "sync, plain");
named!(Modality, "modality", "audio, visual");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), p);
            assert_eq!(toml::Value::try_from(p).unwrap().as_str(), Some(p.as_str()));
        }
        for l in Layout::ALL {
            assert_eq!(l.to_string().parse::<Layout>().unwrap(), l);
        }
        for m in Modality::ALL {
            assert_eq!(m.to_string().parse::<Modality>().unwrap(), m);
        }
        let err = "int4".parse::<Precision>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`int4` is not a precision (expected one of: f32, f16, int8)"
        );
    }
}
