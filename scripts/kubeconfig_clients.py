#!/usr/bin/env python3
"""Real-client checks of KubeNova kubeconfigs against a running manager.

Run by bins/kubenova/tests/e2e.rs (which starts the manager and seeds a tenant, a project
and a cluster whose Capsule Proxy is reported) with the interpreter of the virtualenv that
scripts/kubeconfig_clients.sh creates (pinned `kubernetes` and `PyJWT[crypto]`).

For every role of the tenant and of the project it issues a kubeconfig, loads it with the
Python `kubernetes` client (`config.load_kube_config`), verifies the embedded token with
PyJWT against the JWKS the manager serves (issuer and audience from the discovery document
and the cluster), checks that another cluster's audience and an expired token are
rejected, and runs `kubectl config view --minify --raw` when kubectl is installed (a
notice otherwise). Exec kubeconfigs are loaded too: the client runs `kubenova auth token`,
which must be on PATH with KUBENOVA_TOKEN set.

Usage: kubeconfig_clients.py --manager URL --token-file F --tenant ID --project ID --cluster ID
Exit status 0 when every check passed; each failure is printed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import jwt
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

FAILURES = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        FAILURES.append(what)


def http(method, url, token=None, body=None, accept="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", accept)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def verify(jwks, token, audience, issuer):
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )


def load(path):
    """Loads a kubeconfig with the Python client; returns its Configuration."""
    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=path, client_configuration=cfg)
    return cfg


def bearer_of(cfg):
    # The key name differs between client versions (BearerToken now, authorization before).
    auth = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization") or ""
    return auth[len("Bearer "):] if auth.startswith("Bearer ") else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manager", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--cluster", required=True)
    a = ap.parse_args()
    base = a.manager.rstrip("/")
    token = open(a.token_file).read().strip()

    status, text = http("GET", f"{base}/.well-known/openid-configuration")
    check(status == 200, "discovery document is public")
    disco = json.loads(text)
    issuer = disco["issuer"]
    check(issuer == base, f"issuer is the manager URL ({issuer})")
    status, text = http("GET", disco["jwks_uri"])
    check(status == 200, "JWKS at jwks_uri is public")
    jwks = jwt.PyJWKSet.from_dict(json.loads(text))
    audience = f"kubenova:cluster:{a.cluster}"
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("NOTICE: kubectl not found on PATH: skipping `kubectl config view --minify --raw`")

    tmp = tempfile.mkdtemp(prefix="kn-clients-")
    urls = {
        "tenant": f"{base}/api/v1/tenants/{a.tenant}/kubeconfig",
        "project": f"{base}/api/v1/clusters/{a.cluster}/tenants/{a.tenant}/projects/{a.project}/kubeconfig",
    }
    last_token = None
    for scope, url in urls.items():
        for role in ("owner", "developer", "viewer"):
            what = f"{scope} {role}"
            status, text = http("POST", url, token, {"role": role, "ttl": "30m"})
            check(status == 200, f"{what}: issued ({status})")
            if status != 200:
                print(text)
                continue
            issued = json.loads(text)
            path = os.path.join(tmp, f"{scope}-{role}.yaml")
            with open(path, "w") as f:
                f.write(issued["kubeconfig"])
            cfg = load(path)
            check(cfg.host == issued["server"], f"{what}: python client host is the proxy")
            check(cfg.ssl_ca_cert and os.path.exists(cfg.ssl_ca_cert), f"{what}: CA file from certificate-authority-data")
            check(cfg.verify_ssl, f"{what}: TLS verification on")
            tok = bearer_of(cfg)
            check(tok != "", f"{what}: bearer token loaded")
            claims = verify(jwks, tok, audience, issuer)
            group = (
                f"kubenova:tenant:{claims['groups'][0].split(':')[2]}:{role}"
                if scope == "tenant"
                else claims["groups"][0]
            )
            check(claims["groups"] == [group] and claims["groups"][0].endswith(f":{role}"),
                  f"{what}: groups {claims['groups']}")
            check(claims["exp"] - claims["iat"] == 1800, f"{what}: ttl 30m")
            try:
                verify(jwks, tok, "kubenova:cluster:00000000-0000-0000-0000-000000000000", issuer)
                check(False, f"{what}: another cluster's audience is rejected")
            except jwt.InvalidAudienceError:
                check(True, f"{what}: another cluster's audience is rejected")
            if kubectl:
                out = subprocess.run(
                    [kubectl, "config", "view", "--minify", "--raw", "--kubeconfig", path, "-o", "json"],
                    capture_output=True, text=True,
                )
                check(out.returncode == 0, f"{what}: kubectl config view --minify --raw ({out.stderr.strip()})")
                if out.returncode == 0:
                    view = json.loads(out.stdout)
                    check(view["clusters"][0]["cluster"]["server"] == issued["server"], f"{what}: kubectl sees the proxy")
                    check(view["users"][0]["user"]["token"] == tok, f"{what}: kubectl sees the token")
                    check("insecure-skip-tls-verify" not in view["clusters"][0]["cluster"], f"{what}: no insecure-skip-tls-verify")
            last_token = tok

    # An expired token fails verification.
    status, text = http("POST", urls["tenant"], token, {"role": "viewer", "ttl": 1})
    check(status == 200, "1s token issued")
    if status == 200:
        path = os.path.join(tmp, "short.yaml")
        with open(path, "w") as f:
            f.write(json.loads(text)["kubeconfig"])
        short = bearer_of(load(path))
        time.sleep(2.5)
        try:
            verify(jwks, short, audience, issuer)
            check(False, "expired token is rejected")
        except jwt.ExpiredSignatureError:
            check(True, "expired token is rejected")

    # Exec kubeconfigs: the client runs `kubenova auth token` itself.
    if shutil.which("kubenova") and os.environ.get("KUBENOVA_TOKEN"):
        for scope, role in (("tenant", "owner"), ("project", "developer")):
            status, text = http("GET", f"{urls[scope]}?mode=exec&role={role}", token)
            check(status == 200, f"exec {scope} {role}: issued")
            if status != 200:
                continue
            path = os.path.join(tmp, f"exec-{scope}.yaml")
            with open(path, "w") as f:
                f.write(json.loads(text)["kubeconfig"])
            cfg = load(path)
            tok = bearer_of(cfg)
            check(tok != "" and tok != last_token, f"exec {scope} {role}: fresh token from kubenova auth token")
            if tok:
                claims = verify(jwks, tok, audience, issuer)
                check(claims["groups"][0].endswith(f":{role}"), f"exec {scope} {role}: groups {claims['groups']}")
            if kubectl:
                out = subprocess.run([kubectl, "config", "view", "--minify", "--raw", "--kubeconfig", path],
                                     capture_output=True, text=True)
                check(out.returncode == 0 and "kubenova" in out.stdout, f"exec {scope}: kubectl config view")
    else:
        FAILURES.append("kubenova not on PATH or KUBENOVA_TOKEN unset: exec kubeconfigs not checked")
        print("FAIL kubenova not on PATH or KUBENOVA_TOKEN unset")

    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
