#!/usr/bin/env bash
# Creates (once) the virtualenv with a pinned helm-python-sdk (Helm v4 as a library: lint,
# render, install, upgrade, rollback, uninstall against a kubeconfig) and prints the path of
# its interpreter. The same venv holds a pinned kubernetes-validate (the Kubernetes strict
# JSON schemas of every release, for the rendered chart objects). scripts/test.sh exports it
# as KUBENOVA_HELM_PYTHON for the chart tests and the testkit's Helm tests.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDK_VERSION="0.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"
VENV=".venv/helm-python"
STAMP="$VENV/.pins-$HELM_SDK_VERSION-$KUBERNETES_VALIDATE_VERSION"

if [ ! -f "$STAMP" ]; then
  echo "==> installing helm-python-sdk $HELM_SDK_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "helm-python-sdk==$HELM_SDK_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  touch "$STAMP"
fi
echo "$PWD/$VENV/bin/python"
