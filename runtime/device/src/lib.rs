//! cavsync-device: the on-device runtime — verified bundles run by tract, fed from memory, and the
//! localization session that turns frames and audio into typed records for any sink.
//!
//! Lean on purpose (no burn, no CLI): this is what a board links.

pub mod bundle;
pub mod device;
pub mod encode;
mod graph;
pub mod intops;
#[cfg(target_arch = "x86_64")]
pub mod intproduct;
pub mod latency;
#[cfg(target_arch = "x86_64")]
pub mod matops;
#[cfg(target_arch = "x86_64")]
pub mod packed;
mod pair;
#[cfg(target_arch = "x86_64")]
mod panels;
pub mod rowops;
pub mod session;
pub mod sink;
#[cfg(target_arch = "x86_64")]
pub mod splitproduct;
pub mod team;
#[cfg(all(test, target_arch = "x86_64"))]
mod testing;
