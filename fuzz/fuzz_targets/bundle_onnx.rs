//! ONNX graphs through the bundle check: the fuzzed bytes are the audio graph of a bundle whose
//! manifest is the demo bundle's (with the audio hash rewritten to match), opened on the CPU.
//!
//! The visual graph is a tiny valid stand-in (`tests/data/fuzz/bundle_visual.onnx`), so a
//! graph that passes the audio checks is followed by a fast second load.
#![no_main]

use std::sync::OnceLock;

use cavsync_core::manifest::{MANIFEST_FILE, Manifest, sha256_hex};
use cavsync_device::bundle::{Bundle, PlanOptions};
use cavsync_device::device::Device;
use cavsync_fuzz::{repo_root, scratch_dir, scratch_file};
use libfuzzer_sys::fuzz_target;

/// The demo manifest with the visual hash set to the stand-in's, and the demo's audio hash (to be replaced per input).
fn template() -> &'static (String, String) {
    static TEMPLATE: OnceLock<(String, String)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let demo = repo_root().join("models/demo/bundle");
        let manifest = Manifest::read(&demo).expect("demo manifest parses");
        let text = std::fs::read_to_string(demo.join(MANIFEST_FILE)).expect("demo manifest");
        let visual = std::fs::read(repo_root().join("tests/data/fuzz/bundle_visual.onnx"))
            .expect("visual stand-in graph");
        scratch_file(&manifest.visual.file, &visual);
        let text = text.replace(&manifest.visual.sha256, &sha256_hex(&visual));
        (text, manifest.audio.sha256)
    })
}

// The library turns panics inside third-party decoders into errors (`catch_unwind in bundle::load_plan`); libfuzzer-sys's
// hook would abort on those caught panics too, so the default hook is put back. A panic that
// escapes the target still aborts the process (it cannot unwind out of the `extern "C"` entry).
fuzz_target!(init: drop(std::panic::take_hook()), |data: &[u8]| {
    let (text, audio_sha) = template();
    scratch_file("audio.onnx", data);
    scratch_file(
        MANIFEST_FILE,
        text.replace(audio_sha, &sha256_hex(data)).as_bytes(),
    );
    if let Err(e) = Bundle::open_on(scratch_dir(), &PlanOptions::default(), Device::Cpu) {
        assert!(e.to_string().contains("audio.onnx"), "{e}");
    }
});
