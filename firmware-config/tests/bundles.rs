//! The bundled board profiles name bundles that ship in the repository, of the precision each profile deploys.

use std::path::Path;

use cavsync_core::manifest::Manifest;
use cavsync_firmware_config::BoardProfile;

#[test]
fn profiles_name_shipped_bundles_of_their_precision() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ["pi4", "pi5", "jetson-orin", "x86-dev"] {
        let profile = BoardProfile::bundled(name).unwrap();
        let Some(bundle) = &profile.bundle else {
            assert_eq!(name, "x86-dev", "board {name} names no bundle");
            continue;
        };
        let manifest = Manifest::read(&root.join(bundle))
            .unwrap_or_else(|e| panic!("profile {name}: bundle {bundle}: {e}"));
        assert_eq!(
            manifest.model.precision, profile.precision,
            "profile {name}: bundle {bundle}"
        );
    }
}
