#!/usr/bin/env bash
# Builds the KubeNova images.
#
#   scripts/build-images.sh [--engine podman|buildah|docker] [--tag TAG] [manager] [operator]
#       Builds bins/<binary>/Containerfile (multi-stage: cargo build, Debian slim runtime,
#       non-root; the operator image with helm and the pinned charts at /charts) with the
#       first engine found (podman, buildah, docker) as ghcr.io/kubenova/kubenova-<binary>:TAG
#       (TAG defaults to the workspace version). Needs the base images and, for the
#       operator, get.helm.sh and the charts' registries.
#
#   scripts/build-images.sh --scratch BINARY [OUT.tar]
#       Offline: assembles an OCI image with Debian's buildah from `scratch` holding the
#       given, already built binary plus exactly the shared libraries `ldd` lists (no base
#       image, no registry), as the non-root user 65532; commits it to OUT.tar as an
#       oci-archive and runs `BINARY --version` inside it with `buildah run`. Uses the vfs
#       storage driver and chroot isolation (BUILDAH_ISOLATION=chroot), which work as root
#       in a container without overlayfs or user namespaces. Prints the --version line.
#       CI runs this through bins/kubenova-operator/tests/image.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

scratch() {
  local binary="$1" out="${2:-}"
  [ -x "$binary" ] || { echo "build-images.sh: $binary is not an executable file" >&2; exit 2; }
  command -v buildah >/dev/null 2>&1 || {
    echo "build-images.sh: buildah is not installed (apt-get install buildah)" >&2; exit 3; }
  local name root ctr
  name="$(basename "$binary")"
  STORAGE="$(mktemp -d)"
  export BUILDAH_ISOLATION=chroot
  # A private store: nothing is left behind in the machine's container storage.
  B=(buildah --storage-driver vfs --root "$STORAGE/root" --runroot "$STORAGE/run")
  trap '"${B[@]}" rm --all >/dev/null 2>&1 || true; chmod -R u+w "$STORAGE" 2>/dev/null; rm -rf "$STORAGE"' EXIT
  local b=("${B[@]}")
  ctr="$("${b[@]}" from scratch)"
  root="$("${b[@]}" mount "$ctr")"
  install -D -m 0755 "$binary" "$root/usr/local/bin/$name"
  # The binary's shared libraries (and the dynamic loader), at the paths ldd names.
  ldd "$binary" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
  mkdir -p "$root/tmp" "$root/etc"
  chmod 1777 "$root/tmp"
  echo "nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin" > "$root/etc/passwd"
  echo "nonroot:x:65532:" > "$root/etc/group"
  "${b[@]}" umount "$ctr" >/dev/null
  "${b[@]}" config --user 65532:65532 --entrypoint "[\"/usr/local/bin/$name\"]" \
    --label "org.opencontainers.image.title=$name" "$ctr"
  if [ -n "$out" ]; then
    rm -f "$out"
    "${b[@]}" commit --quiet "$ctr" "oci-archive:$out" >/dev/null
  fi
  "${b[@]}" run --isolation chroot --user 65532:65532 "$ctr" -- "/usr/local/bin/$name" --version
}

if [ "${1:-}" = "--scratch" ]; then
  shift
  scratch "$@"
  exit 0
fi

engine=""
tag=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    manager|operator) targets+=("$1"); shift ;;
    *) echo "build-images.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(manager operator)
if [ -z "$engine" ]; then
  for e in podman buildah docker; do
    if command -v "$e" >/dev/null 2>&1; then engine="$e"; break; fi
  done
fi
[ -n "$engine" ] || { echo "build-images.sh: no podman, buildah or docker found" >&2; exit 3; }
if [ -z "$tag" ]; then
  tag="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
fi
for t in "${targets[@]}"; do
  image="ghcr.io/kubenova/kubenova-$t:$tag"
  echo "==> $engine: $image"
  case "$engine" in
    buildah) buildah build --layers -f "bins/kubenova-$t/Containerfile" -t "$image" . ;;
    *) "$engine" build -f "bins/kubenova-$t/Containerfile" -t "$image" . ;;
  esac
done
