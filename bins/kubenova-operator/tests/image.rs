//! The operator runs from an OCI image assembled offline from `scratch` (see
//! `deploy/helm/tests/image.rs`), and its Containerfile bakes exactly the pinned component
//! charts at /charts, where the helm driver looks for them.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../../deploy/helm/tests/image.rs"]
mod image;

use kubenova_reconcile::components::PINNED;

#[test]
fn binary_runs_in_a_scratch_image() {
    let Some(version) = image::scratch_image_version(std::path::Path::new(env!(
        "CARGO_BIN_EXE_kubenova-operator"
    ))) else {
        return;
    };
    assert_eq!(
        version,
        format!("kubenova-operator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn containerfile_bakes_the_pinned_charts_and_helm() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Containerfile")).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("FROM ")).count(), 3);
    assert!(text.contains("\nUSER 65532:65532\n"));
    assert!(text.contains("COPY --from=charts /out/helm /usr/local/bin/helm"));
    assert!(text.contains("COPY --from=charts /charts /charts"));
    let pulls: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("&& /out/helm pull "))
        .collect();
    assert_eq!(pulls.len(), PINNED.len(), "{pulls:?}");
    for c in PINNED {
        let want = if c.remote.starts_with("oci://") {
            format!("{} --version {} -d /charts", c.remote, c.version)
        } else {
            format!(
                "{} --repo {} --version {} -d /charts",
                c.chart, c.remote, c.version
            )
        };
        assert!(
            pulls.iter().any(|p| p.trim_end_matches(" \\") == want),
            "the Containerfile does not pull {want}: {pulls:?}"
        );
        // The archive name the driver opens (`<chart>-<version>.tgz`).
        assert!(text.contains(&format!("/charts/{}-{}.tgz", c.chart, c.version)));
    }
}
