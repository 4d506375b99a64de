//! cavsync: on-device CAV-MAE Sync inference — preprocessing shared with training, the runtime, and localization.

pub mod annotations;
pub mod atomic;
pub mod bundle;
pub mod cli;
pub mod clip;
pub mod localize;
pub mod metrics;
pub mod npy;
pub mod pipeline;
pub mod preprocess;
pub mod report;
pub mod retrieval;
