"""Runs one Helm action with helm-python-sdk (Helm v4 as a library) for the testkit's tests.

Usage: python helm_action.py '<json>' where the JSON object has
  kubeconfig, action (install | upgrade | rollback | uninstall | test | history | status),
  name, namespace and, per action: chart (a directory), values, wait, version.
Prints one JSON object: {"ok": true, "result": ...} or {"ok": false, "error": ..., "type": ...}.
"""
import json
import sys

import helm_python


def main() -> None:
    req = json.loads(sys.argv[1])
    cfg = helm_python.Config(kubeconfig_path=req["kubeconfig"], namespace=req["namespace"])
    action = req["action"]
    name = req["name"]
    timeout = req.get("timeout", 60)
    try:
        if action == "install":
            out = cfg.install(
                helm_python.Chart.load(req["chart"]),
                name,
                req.get("values"),
                namespace=req["namespace"],
                create_namespace=True,
                wait=req.get("wait"),
                timeout=timeout,
            )
        elif action == "upgrade":
            out = cfg.upgrade(
                helm_python.Chart.load(req["chart"]),
                name,
                req.get("values"),
                namespace=req["namespace"],
                wait=req.get("wait"),
                timeout=timeout,
            )
        elif action == "rollback":
            cfg.rollback(name, version=req.get("version"), wait=req.get("wait"), timeout=timeout)
            out = None
        elif action == "uninstall":
            out = cfg.uninstall(name, wait=req.get("wait"), timeout=timeout)
        elif action == "test":
            out = cfg.test(name, timeout=timeout)
        elif action == "history":
            out = cfg.history(name)
        elif action == "status":
            out = cfg.status(name)
        else:
            raise SystemExit(f"unknown action {action!r}")
    except helm_python.HelmError as e:
        print(json.dumps({"ok": False, "error": str(e), "type": type(e).__name__}))
        return
    print(json.dumps({"ok": True, "result": out}, default=str))


main()
