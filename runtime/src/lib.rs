//! cavsync: on-device CAV-MAE Sync inference — preprocessing shared with training, the runtime, and localization.

pub mod cli;
pub mod npy;
pub mod preprocess;
