//! cavsync-core: what training and inference share, with neither tract nor burn nor a CLI.
//!
//! The bundle manifest and its vocabulary ([`model`]), the official preprocessing
//! ([`preprocess`]), localization math ([`localize`]), the field's metrics ([`metrics`]),
//! retrieval ([`retrieval`]), annotations, clip sources and the per-frame record
//! ([`record`]) that every output of a localization run is made from. Because both the
//! exporter and the device runtime use these, preprocessing and scoring cannot drift apart.

pub mod annotations;
pub mod atomic;
pub mod clip;
pub mod evaluation;
pub mod localize;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod preprocess;
pub mod record;
pub mod report;
pub mod retrieval;
pub mod similarity;
pub mod track;

/// The message a caught panic carried (`panic!` with a literal or a formatted string), or "no message".
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}
