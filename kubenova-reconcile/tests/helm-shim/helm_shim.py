"""The `helm` command line the operator's component driver uses, on helm-python-sdk.

Tests only. Supports exactly what `kubenova_reconcile::components::HelmCli` runs:

    helm upgrade --install RELEASE CHART_ARCHIVE --namespace NS [--create-namespace]
         [--wait] [--timeout 600s] [--set key=value]... [--kubeconfig PATH]

and `helm version`. A chart from a repository or registry (`--repo`, `--version`, `oci://`)
is refused: tests install local chart archives. Like helm, it prints errors as
`Error: ...` on stderr and exits 1.
"""
import sys

import helm_python


def fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def merge(into: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def parse(argv: list[str]) -> dict:
    opts = {"sets": [], "wait": False, "create_namespace": False, "install": False}
    positional = []
    it = iter(argv)
    for arg in it:
        if arg == "--install":
            opts["install"] = True
        elif arg == "--create-namespace":
            opts["create_namespace"] = True
        elif arg == "--wait":
            opts["wait"] = True
        elif arg in ("--namespace", "-n", "--timeout", "--set", "--kubeconfig"):
            value = next(it, None)
            if value is None:
                fail(f"flag needs an argument: {arg}")
            key = {"-n": "namespace", "--set": "sets"}.get(arg, arg.lstrip("-"))
            if key == "sets":
                opts["sets"].append(value)
            else:
                opts[key] = value
        elif arg in ("--repo", "--version") or arg.startswith("oci://"):
            fail(f"the helm test shim installs local chart archives only, not {arg!r}")
        elif arg.startswith("-"):
            fail(f"unknown flag: {arg} (the helm test shim supports what the operator uses)")
        else:
            positional.append(arg)
    opts["positional"] = positional
    return opts


def timeout_seconds(value: str) -> int:
    if value.endswith("s") and value[:-1].isdigit():
        return int(value[:-1])
    if value.endswith("m") and value[:-1].isdigit():
        return int(value[:-1]) * 60
    fail(f"invalid --timeout {value!r}: use seconds like 600s")
    return 0


def upgrade(opts: dict) -> None:
    if len(opts["positional"]) != 2:
        fail('"helm upgrade" requires 2 arguments: RELEASE CHART')
    if not opts["install"]:
        fail("the helm test shim supports upgrade --install only")
    release, chart = opts["positional"]
    namespace = opts.get("namespace", "default")
    values: dict = {}
    for s in opts["sets"]:
        merge(values, helm_python.parse_set_string(s))
    cfg = helm_python.Config(kubeconfig_path=opts.get("kubeconfig"), namespace=namespace)
    common = {
        "namespace": namespace,
        "wait": "watcher" if opts["wait"] else None,
        "timeout": timeout_seconds(opts.get("timeout", "300s")),
    }
    exists = False
    try:
        loaded = helm_python.Chart.load(chart)
        try:
            cfg.history(release)
            exists = True
        except helm_python.HelmNotFoundError:
            exists = False
        if exists:
            rel = cfg.upgrade(loaded, release, values, **common)
        else:
            rel = cfg.install(
                loaded, release, values, create_namespace=opts["create_namespace"], **common
            )
    except helm_python.HelmError as e:
        fail(f"{'UPGRADE' if exists else 'INSTALLATION'} FAILED: {e}")
    if exists:
        print(f'Release "{release}" has been upgraded. Happy Helming!')
    else:
        print(f'Release "{release}" does not exist. Installing it now.')
    print(f"NAME: {release}\nNAMESPACE: {namespace}\nSTATUS: {rel['status']}\nREVISION: {rel['revision']}")


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["version"]:
        print(f"version.BuildInfo{{Version:\"{helm_python.helm_sdk_version()}\", shim:\"helm-python-sdk\"}}")
        return
    if argv[:1] != ["upgrade"]:
        fail(f"the helm test shim supports `upgrade --install` and `version`, not {argv[:1]}")
    upgrade(parse(argv[1:]))


main()
