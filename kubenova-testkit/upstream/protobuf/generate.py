#!/usr/bin/env python3
"""Regenerates fields.json: the protobuf field table of every Kubernetes API message.

Each message maps to its fields, `[tag, jsonName, kind]` with `kind` one of string, int32,
int64, bool, bytes, double, map_string, map_bytes, or `[tag, jsonName, "message" |
"map_message", repeated, messageName]` plus `true` for a field to inline (a Go struct
embedded with `json:",inline"`); a repeated scalar has `true` as its fourth element.

The testkit decodes the protobuf bodies that kubectl and client-go send for built-in kinds
(`application/vnd.kubernetes.protobuf`) with this table. It is read from the prost
attributes of the `k8s-pb` crate (the Kubernetes `generated.proto` files compiled by
kube-rs), and each field's JSON name is taken from the Kubernetes 1.36 schemas beside
it (`hostIP`, not `hostIp`).

Usage: python3 generate.py <path to the unpacked k8s-pb crate> [output]  (e.g.
~/.cargo/registry/src/*/k8s-pb-0.9.0 after `cargo fetch` of a crate depending on it; the
output defaults to fields.json beside this script). `tests/protobuf_table.rs` regenerates it
and fails on drift; `KUBENOVA_BLESS=1` rewrites it.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFS = os.path.join(HERE, "..", "kubernetes", "v1.36.0-local-strict", "_definitions.json")

SKIP = {"String", "Option", "Vec", "BTreeMap", "Box"}


def module_name(parts):
    return "io.k8s." + ".".join(p.replace("_", "-") for p in parts)


def resolve(mod, text):
    """The message a field's Rust type names (the last path that is not a container)."""
    found = None
    for m in re.finditer(r"(?<![:\w])((?:super::)*(?:[a-z_0-9]+::)*)([A-Z]\w*)", text):
        prefix, name = m.group(1), m.group(2)
        if name in SKIP:
            continue
        supers = prefix.count("super::")
        rest = [p for p in prefix.split("::") if p and p != "super"]
        base = mod[: len(mod) - supers] if supers else mod
        found = module_name(base + rest) + "." + name
    return found


def main():
    root = os.path.join(sys.argv[1], "src")
    defs = json.load(open(DEFS))["$defs"]
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f != "mod.rs":
                continue
            mod = os.path.relpath(dirpath, root).split(os.sep)
            src = open(os.path.join(dirpath, f)).read()
            for sm in re.finditer(r"pub struct (\w+) \{(\}|.*?\n\})", src, re.S):
                name, body = sm.group(1), sm.group(2)
                full = module_name(mod) + "." + name
                props = (defs.get(full) or {}).get("properties") or {}
                by_lower = {p.lower(): p for p in props}
                fields = []
                for chunk in body.split("#[prost(")[1:]:
                    fm = re.match(r"(.*?)\)\]\s*pub (?:r#)?(\w+):(.*)", chunk, re.S)
                    attr, fname, ty = fm.group(1), fm.group(2), fm.group(3)
                    ty = ty.split("///")[0]
                    tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), fname)
                    json_name = by_lower.get(fname.replace("_", "").lower(), camel)
                    repeated = "repeated" in attr
                    mm = re.match(r'btree_map = "string, (\w+)"', attr)
                    if mm:
                        kind = "map_" + mm.group(1)
                    else:
                        kind = attr.split(",")[0].split(" ")[0]
                    entry = [tag, json_name, kind]
                    if repeated:
                        entry.append(True)
                    if kind in ("message", "map_message"):
                        while len(entry) < 4:
                            entry.append(repeated)
                        entry.append(resolve(mod, ty))
                    fields.append(entry)
                out[full] = sorted(fields)
    # Go structs embedded with `json:",inline"` (LocalObjectReference in ConfigMapEnvSource,
    # ProbeHandler in Probe, VolumeSource in Volume, ...) are nested messages in protobuf but
    # their fields sit in the parent in JSON: mark such fields (their name is no property of
    # the parent, and their fields are) so the decoder inlines them.
    for name, fields in out.items():
        props = (defs.get(name) or {}).get("properties")
        if not props:
            continue
        for f in fields:
            if f[2] != "message" or f[3] or f[1] in props:
                continue
            inner = set((defs.get(f[4]) or {}).get("properties") or {})
            inner |= {x[1] for x in out.get(f[4], [])}
            if inner & set(props):
                f.append(True)
    target = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "fields.json")
    with open(target, "w") as f:
        json.dump(out, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    print(f"{len(out)} messages")


main()
