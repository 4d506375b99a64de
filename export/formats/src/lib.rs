//! cavsync-formats: CAV-MAE (Sync) checkpoints in, model bundles out, without burn.
//!
//! A PyTorch or safetensors checkpoint is read without executing anything ([`checkpoint`]),
//! its layout and dimensions are detected from the official key names and every key and shape
//! is verified ([`layout`]), and its encoders are written as ONNX graphs laid out for tract's
//! fast paths ([`onnx`]) into a bundle whose manifest the runtime verifies ([`bundle`]).
//! Random-weight checkpoints with the same key names serve benchmarks and tests ([`random`]).
//! The vocabulary (precision, layout, modality) and the manifest schema come from
//! `cavsync_core`, so the exporter and the runtime cannot disagree about them. Writing ONNX
//! needs only the protobuf schema ([`pb`]); calibrating the static int8 scheme runs the f32
//! graphs through tract ([`calibrate`]).

/// Writing a model bundle: both encoder graphs as ONNX plus the manifest the runtime reads.
pub mod bundle;
/// Activation ranges of the static int8 scheme, calibrated by running the f32 graphs.
pub mod calibrate;
/// Reading `torch.save` and safetensors checkpoints into named f32 tensors.
pub mod checkpoint;
/// Detecting a checkpoint's layout and dimensions from its keys, and verifying every key.
pub mod layout;
/// Writing one encoder of a checkpoint as an ONNX graph.
pub mod onnx;
/// The ONNX protobuf messages the writer emits.
pub mod pb;
/// int8 bundles from f32 bundles (integer matmuls).
pub mod quantize;
/// Random-weight checkpoints with the official key names.
pub mod random;
