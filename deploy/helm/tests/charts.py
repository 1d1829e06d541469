"""Helm checks of the KubeNova charts, driven by the Rust tests (deploy/helm/tests/README.md).

Runs with the interpreter of scripts/helm_python.sh (helm-python-sdk: Helm v4 as a library,
and kubernetes-validate). One command per call; the answer is one JSON document on stdout,
so the Rust side asserts on data, never on log text.

    python charts.py lint CHART VALUES.json NAMESPACE -> {"messages": [...], "errors": [...]}
    python charts.py render CHART VALUES.json NAME NAMESPACE
        -> {"ok": true, "objects": [...], "notes": "..."} or {"ok": false, "error": "..."}
    python charts.py render-live CHART VALUES.json NAME NAMESPACE KUBECONFIG
        -> as render, but `lookup` reads the cluster of KUBECONFIG (an upgrade's rendering)
    python charts.py validate OBJECTS.json VERSION -> [{"object": "Kind/name", "error": "..."}]
    python charts.py release ACTION CHART VALUES.json NAME NAMESPACE KUBECONFIG
        ACTION is install, upgrade, rollback or uninstall, against the cluster of KUBECONFIG
        -> {"ok": true, "release": {...}} or {"ok": false, "error": "..."}

`render` checks the values against the chart's values.schema.json first (as `helm install`
does), then renders offline (`lookup` finds nothing, as on a first install) and returns
every object of every template (hooks included) in template-path order.
"""

from __future__ import annotations

import json
import sys

import yaml


def _values(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def lint(chart: str, values_path: str, namespace: str) -> dict:
    import helm_python as helm

    return helm.lint(
        chart, _values(values_path), strict=True, namespace=namespace, kube_version="v1.36.0"
    )


def render(
    chart_path: str, values_path: str, name: str, namespace: str, kubeconfig: str | None = None
) -> dict:
    import helm_python as helm

    values = _values(values_path)
    try:
        chart = helm.Chart.load(chart_path)
        chart.validate_schema(values)
        if kubeconfig is None:
            manifests = chart.render(values, name=name, namespace=namespace, is_install=True)
        else:
            config = helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)
            manifests = config.render(
                chart, values, name=name, namespace=namespace, is_upgrade=True, revision=2
            )
    except helm.HelmError as e:
        return {"ok": False, "error": str(e)}
    objects = []
    notes = ""
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            notes = manifests[path]
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                doc_source = {"template": path, "object": doc}
                objects.append(doc_source)
    return {"ok": True, "objects": objects, "notes": notes}


def release(
    action: str, chart_path: str, values_path: str, name: str, namespace: str, kubeconfig: str
) -> dict:
    import helm_python as helm

    values = _values(values_path)
    config = helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)
    try:
        if action == "install":
            out = config.install(chart_path, name, values, namespace=namespace, timeout=60)
        elif action == "upgrade":
            out = config.upgrade(chart_path, name, values, namespace=namespace, timeout=60)
        elif action == "rollback":
            out = config.rollback(name)
        elif action == "uninstall":
            out = config.uninstall(name)
        else:
            return {"ok": False, "error": f"unknown release action {action!r}"}
    except helm.HelmError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "release": out}


def validate(objects_path: str, version: str) -> list:
    import kubernetes_validate

    with open(objects_path, encoding="utf-8") as f:
        objects = json.load(f)
    failures = []
    for obj in objects:
        label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported as data
            message = getattr(e, "message", None) or str(e).splitlines()[0]
            where = "/".join(str(p) for p in getattr(e, "path", []))
            failures.append({"object": label, "error": f"{type(e).__name__}: {message} at /{where}"})
    return failures


def main(argv: list[str]) -> int:
    command, args = argv[1], argv[2:]
    if command == "lint":
        out = lint(*args)
    elif command == "render":
        out = render(*args)
    elif command == "render-live":
        out = render(*args)
    elif command == "release":
        out = release(*args)
    elif command == "validate":
        out = validate(*args)
    else:
        print(f"unknown command {command!r}: use lint, render or validate", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
