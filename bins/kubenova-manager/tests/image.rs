//! The manager runs from an OCI image assembled offline from `scratch` (see
//! `deploy/helm/tests/image.rs`): its `--version` inside the image is this build's.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../../deploy/helm/tests/image.rs"]
mod image;

#[test]
fn binary_runs_in_a_scratch_image() {
    let Some(version) =
        image::scratch_image_version(std::path::Path::new(env!("CARGO_BIN_EXE_kubenova-manager")))
    else {
        return;
    };
    assert_eq!(
        version,
        format!("kubenova-manager {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The Containerfile runs the binary as a non-root user, with the data directory the chart
/// mounts.
#[test]
fn containerfile_is_multi_stage_and_non_root() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Containerfile")).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
    assert!(text.contains("\nUSER 65532:65532\n"));
    assert!(text.contains("KUBENOVA_DATA_DIR=/var/lib/kubenova"));
    assert!(text.contains("cargo build --release --locked -p kubenova-manager"));
}
