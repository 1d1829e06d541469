#!/usr/bin/env bash
# Creates (once) the virtualenv with the pinned Python clients that
# scripts/kubeconfig_clients.py uses, and prints the path of its interpreter.
# scripts/test.sh exports it as KUBENOVA_CLIENTS_PYTHON for bins/kubenova/tests/e2e.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION="37.0.2"
PYJWT_VERSION="2.15.1"
VENV=".venv/kubeconfig-clients"
STAMP="$VENV/.pins-$KUBERNETES_VERSION-$PYJWT_VERSION"

if [ ! -f "$STAMP" ]; then
  echo "==> installing kubernetes $KUBERNETES_VERSION and PyJWT[crypto] $PYJWT_VERSION into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "kubernetes==$KUBERNETES_VERSION" "PyJWT[crypto]==$PYJWT_VERSION" >&2
  touch "$STAMP"
fi
echo "$PWD/$VENV/bin/python"
