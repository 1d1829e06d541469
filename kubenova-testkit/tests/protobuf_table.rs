//! `upstream/protobuf/fields.json` is generated: this regenerates it from the `k8s-pb` 0.9.0
//! crate's sources (in Cargo's registry cache; `cargo fetch` of any crate depending on
//! `k8s-pb = "=0.9.0"` puts them there) and fails on drift. `KUBENOVA_BLESS=1` rewrites the
//! committed file. Without the sources or python3 the check is skipped with a notice
//! (`KUBENOVA_REQUIRE_PROTOBUF_SOURCES=1` makes that a failure).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn k8s_pb_sources() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .filter_map(Result::ok)
        .map(|d| d.path().join("k8s-pb-0.9.0"))
        .find(|p| p.join("src/lib.rs").is_file())
}

#[test]
fn the_protobuf_field_table_is_what_the_generator_makes() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("upstream/protobuf");
    let committed = here.join("fields.json");
    let Some(src) = k8s_pb_sources() else {
        assert!(
            std::env::var("KUBENOVA_REQUIRE_PROTOBUF_SOURCES").as_deref() != Ok("1"),
            "the k8s-pb 0.9.0 sources are not in Cargo's registry cache"
        );
        eprintln!(
            "NOTICE: k8s-pb 0.9.0 sources not in Cargo's registry cache; fields.json drift not checked"
        );
        return;
    };
    let out = std::env::temp_dir().join(format!("kn-fields-{}.json", std::process::id()));
    let target = if std::env::var("KUBENOVA_BLESS").as_deref() == Ok("1") {
        committed.clone()
    } else {
        out.clone()
    };
    let run = Command::new("python3")
        .arg(here.join("generate.py"))
        .arg(&src)
        .arg(&target)
        .output();
    let Ok(run) = run else {
        eprintln!("NOTICE: python3 not found; fields.json drift not checked");
        return;
    };
    assert!(
        run.status.success(),
        "generate.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let fresh = std::fs::read_to_string(&target).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(
        fresh == std::fs::read_to_string(&committed).unwrap(),
        "upstream/protobuf/fields.json is stale: regenerate it with KUBENOVA_BLESS=1 cargo test -p kubenova-testkit --test protobuf_table"
    );
}
