#!/usr/bin/env python3
"""Writes the starting seeds of every fuzz target into seeds/<target>/ (not committed: the
committed corpus/<target>/ is what `cargo fuzz cmin` kept of these plus what the fuzzer found).
Tokens use the fixed test keys in src/, the ones scoregate_fuzz::tokens() trusts.

    python3 make_seeds.py && cargo +nightly fuzz run <target> corpus/<target> seeds/<target>

Needs python3 with the `cryptography` package."""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "seeds")

# Must match src/lib.rs.
ES_KID, HS_KID, IDP_KID = "fuzz-es256", "fuzz-hs256", "idp-rs"
HS_SECRET = "c2NvcmVnYXRlLWZ1enotaHMyNTYtc2VjcmV0LTMyYg"
IDP_ISSUER, IDP_AUDIENCE = "https://idp.example/", "api://scoring"
FAR = 4102444800  # 2100-01-01: the seed tokens stay valid


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64u_dec(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def key(name):
    with open(os.path.join(HERE, "src", name), "rb") as f:
        return ser.load_pem_private_key(f.read(), None)


ES, RS = key("es256.key.pem"), key("rs256.key.pem")


def jwt(header, claims, alg=None):
    alg = alg or header.get("alg")
    h = b64u(json.dumps(header, separators=(",", ":")).encode())
    c = b64u(json.dumps(claims, separators=(",", ":")).encode())
    msg = f"{h}.{c}".encode()
    if alg == "ES256":
        r, s = decode_dss_signature(ES.sign(msg, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "RS256":
        sig = RS.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "HS256":
        sig = hmac.new(b64u_dec(HS_SECRET), msg, hashlib.sha256).digest()
    else:
        sig = b""
    return f"{h}.{c}.{b64u(sig)}"


def own(**over):
    c = {"iss": "scoregate", "aud": "iris", "sub": "fuzz", "jti": "1", "iat": 1700000000,
         "nbf": 1700000000, "exp": FAR}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def idp(**over):
    c = {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": "client-1", "exp": FAR}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def jwt_seeds():
    es = {"alg": "ES256", "typ": "JWT", "kid": ES_KID}
    hs = {"alg": "HS256", "typ": "JWT", "kid": HS_KID}
    rs = {"alg": "RS256", "typ": "JWT", "kid": IDP_KID}
    good = jwt(es, own())
    out = {
        "own_es256": good,
        "own_hs256_retired": jwt(hs, own()),
        "idp_rs256": jwt(rs, idp()),
        "idp_rs256_no_kid": jwt({"alg": "RS256"}, idp()),
        "idp_aud_list": jwt(rs, idp(aud=["other", IDP_AUDIENCE])),
        "expired": jwt(es, own(exp=1700000100)),
        "not_yet": jwt(es, own(nbf=FAR - 10)),
        "wrong_aud": jwt(es, own(aud="other")),
        "wrong_iss": jwt(es, own(iss="evil")),
        "no_exp": jwt(es, own(exp=None)),
        "exp_string": jwt(es, own(exp="soon")),
        "exp_float": jwt(es, own(exp=4102444800.5)),
        "alg_none": jwt({"alg": "none", "kid": ES_KID}, own(), alg="none"),
        "rs_hs_confusion": jwt({"alg": "HS256", "kid": IDP_KID}, idp(), alg="HS256"),
        "crit": jwt(dict(es, crit=["exp"]), own()),
        "jku_ignored": jwt(dict(es, jku="https://evil.example/jwks"), own()),
        "unknown_kid": jwt({"alg": "ES256", "kid": "nope"}, own()),
        "kid_number": jwt({"alg": "ES256", "kid": 5}, own()),
        "bad_sig": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "two_dots_only": "..",
        "header_only": good.split(".")[0] + "..",
        "padded": good + "==",
        "not_json": b64u(b"nope") + "." + b64u(b"{}") + ".",
    }
    return {k: v.encode() for k, v in out.items()}


def proxy(cmd, fam, body, declared=None):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    n = len(body) if declared is None else declared
    return sig + bytes([0x20 | cmd, fam]) + struct.pack(">H", n) + body


def proxy_seeds():
    v4 = bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack(">HH", 5555, 8443)
    v6 = bytes.fromhex("20010db8000000000000000000000001" "20010db8000000000000000000000002")
    v6 += struct.pack(">HH", 40000, 443)
    tlv = bytes([0x04, 0x00, 0x03, 1, 2, 3, 0xEA, 0x00, 0x05, 0x01]) + b"vpce"
    return {
        "tcp4": proxy(1, 0x11, v4),
        "tcp6": proxy(1, 0x21, v6),
        "tcp4_tlv_and_tail": proxy(1, 0x11, v4 + tlv) + b"\x16\x03\x01\x02\x00",
        "local": proxy(0, 0x00, b""),
        "local_with_block": proxy(0, 0x11, v4),
        "unix": proxy(1, 0x31, bytes(216)),
        "udp4": proxy(1, 0x12, v4),
        "short": proxy(1, 0x21, v4),
        "cut": proxy(1, 0x11, v4, declared=40),
        "v1_text": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    }


def route_seeds():
    paths = ["/api/v1/service/iris/score", "/api/v1/service/other-model-2/swagger.json",
             "/api/v1/service/iris/score/", "/api/v1/service/%69ris/score",
             "/api/v1/service/iris/../iris/score", "/api/v1/service//score", "/",
             "/api/v1/service/abc/score?x=1", "/api/v1/service/a" + "b" * 31 + "/score"]
    return {f"p{i}": p.encode() for i, p in enumerate(paths)}


def auth_seeds():
    vals = [b"Bearer abc", b"bearer abc", b"BEARER abc \t", b"Bearer ", b"Basic dXNlcjpwdw==",
            b"Bearerabc", b"Bearer a\nBearer b", b"Bearer \xff\x80", b"",
            b"Bearer " + jwt_seeds()["own_es256"]]
    return {f"a{i}": v for i, v in enumerate(vals)}


def request_id_seeds():
    vals = [b"abc-123", b"0f8fad5b-d9cb-469f-a165-70867728950e", b"a:b.c_d", b"x" * 100,
            b"x" * 101, b"", b"a b", b"\xff", b"tab\there"]
    return {f"r{i}": v for i, v in enumerate(vals)}


FULL_CONFIG = """
[listen]
address = ["0.0.0.0:8443", "[::]:8443"]
public_url = "https://scoring.example.com"
allow = ["10.0.0.0/8", "2001:db8::/32"]
deny = ["10.9.0.0/16"]
trusted_proxies = ["10.0.0.5/32"]
proxy_protocol = "v2"

[tls]
strict = true
[[tls.certificates]]
cname = "*.example.com"
cert = "certs/fullchain.pem"
key = "certs/key.pem"

[admin]
address = "127.0.0.1:9090"
token_file = "admin-token"

[state]
dir = "/var/lib/scoregate"

[runtime]
worker_threads = 2

[server]
drain_timeout = "25s"
watch = true

[limits]
header_read_timeout = "10s"
max_header_size = "64KiB"
max_headers = 100
idle_timeout = "90s"
tls_handshake_timeout = "10s"
max_connections = 10000
max_in_flight = 1000

[log]
format = "json"
access = true

[tokens]
algorithm = "RS256"
lifetime = "1h"
refresh_after = "45m"
leeway = "30s"
[[tokens.trusted_issuers]]
issuer = "https://login.example/tenant/v2.0"
audience = "api://scoring"
algorithm = "RS256"
jwks = "https://login.example/tenant/discovery/v2.0/keys"

[[service]]
name = "iris"
auth = "token"
backends = ["http://10.0.0.5:5001", "http://10.0.0.6:5001"]
backend_protocol = "h2c"
score_path = "/score"
scoring_timeout = "60s"
max_body = "100MiB"
max_concurrent_requests_per_backend = 4
max_request_wait_time = "500ms"
allow = ["10.0.0.0/8"]
deny = []
trusted_issuers = ["https://login.example/tenant/v2.0"]
[service.health]
path = "/"
period = "5s"
timeout = "1s"
failure_threshold = 3
success_threshold = 1
initial_delay = "0s"

[[service]]
name = "other-model-2"
auth = "key"
backends = ["http://model:5001"]
primary_key = "abcdefghijklmnopqrstuvwxyz012345"
secondary_key = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

[[service]]
name = "open"
auth = "none"
backends = ["http://127.0.0.1:5002"]
"""


def config_seeds():
    out = {"full": FULL_CONFIG.encode()}
    for rel in ["config/scoregate.toml", "deploy/kubernetes/base/scoregate.toml"]:
        p = os.path.join(ROOT, rel)
        if os.path.exists(p):
            with open(p, "rb") as f:
                out[rel.replace("/", "_")] = f.read()
    with open(os.path.join(ROOT, "src/config/tests.rs")) as f:
        tests = f.read()
    for i, m in enumerate(re.finditer(r'r#"(.*?)"#', tests, re.S)):
        out[f"tests_{i}"] = m.group(1).encode()
    return out


def jwks_seeds():
    rn = RS.public_key().public_numbers()
    en = ES.public_key().public_numbers()
    rsa_jwk = {"kty": "RSA", "kid": "idp-rs", "use": "sig", "alg": "RS256",
               "n": b64u(rn.n.to_bytes(256, "big")), "e": b64u(rn.e.to_bytes(3, "big"))}
    ec_jwk = {"kty": "EC", "kid": "idp-es", "crv": "P-256", "alg": "ES256",
              "x": b64u(en.x.to_bytes(32, "big")), "y": b64u(en.y.to_bytes(32, "big"))}
    oct_jwk = {"kty": "oct", "kid": "idp-hs", "k": HS_SECRET}
    docs = {
        "rsa": {"keys": [rsa_jwk]},
        "ec": {"keys": [ec_jwk]},
        "oct": {"keys": [oct_jwk]},
        "mixed": {"keys": [rsa_jwk, ec_jwk, dict(oct_jwk, alg="HS256")]},
        "no_alg_no_kid": {"keys": [{k: v for k, v in ec_jwk.items() if k not in ("alg", "kid")}]},
        "bad_curve": {"keys": [dict(ec_jwk, crv="P-384")]},
        "empty": {"keys": []},
        "unknown_kty": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]},
    }
    out = {}
    # First byte: the algorithm the target tries (0 RS256, 1 ES256, 2 HS256, 3 PS256).
    for name, doc in docs.items():
        for pick in range(3):
            out[f"{name}_{pick}"] = bytes([pick]) + json.dumps(doc).encode()
    return out


def compare_seeds():
    # One tolerance byte (0: 0, 1: 1e-9, 2: 1e-6, 3: 0.1), the live body, 0xff, the mirror's body.
    iris = {"predictions": ["setosa", "virginica"],
            "probabilities": [[0.9734, 0.0266, 0.0], [0.0, 0.0833, 0.9167]]}
    pairs = {
        "iris_same": (json.dumps(iris), json.dumps(dict(reversed(list(iris.items()))), indent=1)),
        "iris_diff": (json.dumps(iris), json.dumps(dict(iris, predictions=["setosa", "setosa"]))),
        "numbers": ('[1, 1.0, -0, 1e-13, 9007199254740993, 18446744073709551615, -9223372036854775808]',
                    '[1.0, 1, 0.0, 0, 9007199254740992, 1.8446744073709552e19, -9.2e18]'),
        "escapes": ('{"\\u00e9\\n": "\\ud83d\\ude00", "a b": [true, false, null]}',
                    '{"a b": [true, false, null], "\u00e9\\n": "\U0001F600"}'),
        "repeated": ('{"a": 1, "b": {"c": [1, 2]}, "a": 2}', '{"b": {"c": [1, 2, 3]}, "a": 2}'),
        "nested": ("[" * 128 + "1" + "]" * 128, "[" * 129 + "1" + "]" * 129),
        "not_json": ("Healthy", '{"error": "bad input"'),
        "empty": ("", "{}"),
    }
    out = {}
    for name, (live, mirror) in pairs.items():
        for tol in (0, 2):
            out[f"{name}_{tol}"] = bytes([tol]) + live.encode() + b"\xff" + mirror.encode()
    return out


def main():
    targets = {"jwt": jwt_seeds(), "proxy_v2": proxy_seeds(), "route": route_seeds(),
               "authorization": auth_seeds(), "client_request_id": request_id_seeds(),
               "config": config_seeds(), "jwks": jwks_seeds(), "compare": compare_seeds()}
    shutil.rmtree(OUT, ignore_errors=True)
    for target, seeds in targets.items():
        os.makedirs(os.path.join(OUT, target))
        for name, data in seeds.items():
            with open(os.path.join(OUT, target, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
