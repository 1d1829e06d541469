//! Shared by `bins/*/tests/image.rs` (included with `#[path]`): assembles an OCI image of a
//! built binary with `scripts/build-images.sh --scratch` (Debian's buildah, `from scratch`,
//! the binary plus the libraries `ldd` lists, vfs storage, chroot isolation), commits it to
//! an oci-archive and runs the binary's `--version` inside it. Without buildah the check
//! is skipped loudly; `KUBENOVA_REQUIRE_BUILDAH=1` (CI) makes that a failure.
#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the image of `binary` and returns what `--version` printed inside it, or `None`
/// when buildah is missing (and not required).
pub fn scratch_image_version(binary: &Path) -> Option<String> {
    let found = Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("KUBENOVA_REQUIRE_BUILDAH").as_deref() == Ok("1") {
            panic!(
                "KUBENOVA_REQUIRE_BUILDAH=1 but buildah is not installed (apt-get install buildah)"
            );
        }
        eprintln!(
            "!!! IMAGE CHECK SKIPPED: buildah is not installed (apt-get install buildah) !!!"
        );
        return None;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    let out = Command::new(repo.join("scripts/build-images.sh"))
        .arg("--scratch")
        .arg(binary)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-images.sh --scratch {} failed:\n{}\n{}",
        binary.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // An OCI archive: a tar with oci-layout and index.json.
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(names.lines().any(|l| l == "oci-layout"), "{names}");
    assert!(names.lines().any(|l| l == "index.json"), "{names}");
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
