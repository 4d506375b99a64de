//! Preprocessing shared by training (`cavsync-export`) and inference (`cavsync`), so the two cannot drift apart.

pub mod audio;
pub mod fbank;
pub mod hygiene;
pub mod image;
pub mod segment;
pub mod stream;
