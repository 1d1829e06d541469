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
    python charts.py cli COMMAND_LINE REPO WORKDIR KUBECONFIG
        runs one documented `helm install|upgrade|rollback|uninstall ...` command line
        (the install guide's, see `cli` below) against the cluster of KUBECONFIG: chart
        paths are relative to REPO, `-f` files to WORKDIR, `$VARS` come from the
        environment -> {"ok": true, "action": ..., "release": ..., "namespace": ...} or
        {"ok": false, "error": "..."}; a flag or form it does not know exits 2, so the
        guide cannot use a flag the test does not translate

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


class UnknownForm(Exception):
    """A command line the translation does not know (a failure of the docs test)."""


def _expand(token: str) -> str:
    """`$VAR` and `${VAR}` from the environment; an unset variable is an error."""
    import os
    import re

    def var(m: "re.Match[str]") -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise UnknownForm(f"the command uses ${name}, which the test does not set")
        return os.environ[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, token)


def _merge(base: dict, over: dict) -> dict:
    """Helm's merge of values sources: maps merge recursively, the later value wins."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_cli(line: str, workdir: str) -> dict:
    """Translates a `helm` command line into an action and its arguments, as the helm
    CLI reads them: `install NAME CHART`, `upgrade [--install] NAME CHART`,
    `rollback NAME [REVISION]`, `uninstall NAME`; `-n/--namespace`, `--create-namespace`,
    `--reuse-values`, `-f/--values FILE` (YAML, merged in order) then `--set`,
    `--set-string` (merged in order, later wins). Anything else raises UnknownForm."""
    import os
    import shlex

    import helm_python as helm

    args = [_expand(t) for t in shlex.split(line)]
    if not args or args[0] != "helm":
        raise UnknownForm(f"not a helm command: {line!r}")
    args = args[1:]
    if not args or args[0] not in ("install", "upgrade", "rollback", "uninstall"):
        raise UnknownForm(f"unknown helm subcommand in {line!r}")
    action, args = args[0], args[1:]
    out = {"action": action, "namespace": "default", "create_namespace": False,
           "reuse_values": False, "install": False}
    files: dict = {}
    sets: dict = {}
    positional = []
    i = 0

    def value() -> str:
        nonlocal i
        if i + 1 >= len(args):
            raise UnknownForm(f"{args[i]} needs a value in {line!r}")
        i += 1
        return args[i]

    while i < len(args):
        a = args[i]
        if a in ("-n", "--namespace"):
            out["namespace"] = value()
        elif a.startswith("--namespace="):
            out["namespace"] = a.split("=", 1)[1]
        elif a == "--create-namespace" and action in ("install", "upgrade"):
            out["create_namespace"] = True
        elif a == "--install" and action == "upgrade":
            out["install"] = True
        elif a == "--reuse-values" and action == "upgrade":
            out["reuse_values"] = True
        elif a in ("-f", "--values") and action in ("install", "upgrade"):
            with open(os.path.join(workdir, value()), encoding="utf-8") as f:
                files = _merge(files, yaml.safe_load(f) or {})
        elif a == "--set" and action in ("install", "upgrade"):
            sets = _merge(sets, helm.parse_set_string(value()))
        elif a == "--set-string" and action in ("install", "upgrade"):
            sets = _merge(sets, helm.parse_set_string_values(value()))
        elif a.startswith("-"):
            raise UnknownForm(f"flag {a} of `helm {action}` is not translated (in {line!r})")
        else:
            positional.append(a)
        i += 1
    want = {"install": 2, "upgrade": 2, "uninstall": 1}.get(action)
    if action == "rollback":
        if len(positional) not in (1, 2):
            raise UnknownForm(f"helm rollback takes NAME [REVISION]: {line!r}")
        out["revision"] = int(positional[1]) if len(positional) == 2 else None
    elif len(positional) != want:
        raise UnknownForm(f"helm {action} takes {want} arguments, got {positional}: {line!r}")
    out["name"] = positional[0]
    if action in ("install", "upgrade"):
        out["chart"] = positional[1]
    out["values"] = _merge(files, sets)
    return out


def cli(line: str, repo: str, workdir: str, kubeconfig: str) -> dict:
    """Runs one documented helm command line (see parse_cli) against KUBECONFIG."""
    import os

    import helm_python as helm

    cmd = parse_cli(line, workdir)
    ns = cmd["namespace"]
    config = helm.Config(kubeconfig_path=kubeconfig, namespace=ns)
    try:
        action = cmd["action"]
        if action == "upgrade" and cmd["install"]:
            known = [r.get("name") for r in config.list(all_states=True)]
            if cmd["name"] not in known:
                action = "install"
        if action in ("install", "upgrade"):
            chart = helm.Chart.load(os.path.join(repo, cmd["chart"]))
            chart.validate_schema(cmd["values"])
        if action == "install":
            out = config.install(chart, cmd["name"], cmd["values"], namespace=ns, timeout=60,
                                 create_namespace=cmd["create_namespace"])
        elif action == "upgrade":
            out = config.upgrade(chart, cmd["name"], cmd["values"], namespace=ns, timeout=60,
                                 reuse_values=cmd["reuse_values"])
        elif action == "rollback":
            out = config.rollback(cmd["name"], version=cmd["revision"])
        else:
            out = config.uninstall(cmd["name"])
    except helm.HelmError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "action": action, "namespace": ns, "name": cmd["name"], "release": out}


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
    elif command == "cli":
        try:
            out = cli(*args)
        except UnknownForm as e:
            print(f"install guide command not translated: {e}", file=sys.stderr)
            return 2
    else:
        print(f"unknown command {command!r}: use lint, render or validate", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
