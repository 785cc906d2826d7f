#!/usr/bin/env python3
"""Offline checks of the Docker kit (deploy/docker), run by scripts/check-docker.sh.

No Docker engine is needed: the files are read and their promises checked against each other —
the model is never published and shares only an internal network with the gateway, the
gateway's config names the model by its compose service name and port, the config is mounted
where the image's SCOREGATE_CONFIG points, the state is a volume, docker's grace period covers
the drain, and the image has a HEALTHCHECK the binary can run.
"""
import os
import re
import sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))


def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m)", d.strip())
    assert m, f"duration {d!r}"
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


def main():
    with open(os.path.join(HERE, "compose.yml")) as f:
        compose = yaml.safe_load(f)
    with open(os.path.join(HERE, "scoregate.toml"), "rb") as f:
        config = tomllib.load(f)
    with open(os.path.join(REPO, "Dockerfile")) as f:
        dockerfile = f.read()
    with open(os.path.join(HERE, "model.Dockerfile")) as f:
        model_dockerfile = f.read()

    services, networks = compose["services"], compose["networks"]
    gw, model = services["gateway"], services["model"]

    # The model: never published, only on internal networks, which the gateway joins.
    assert "ports" not in model, "the model must not publish a port"
    for n in model["networks"]:
        assert networks[n].get("internal") is True, f"model network {n} must be internal"
        assert n in gw["networks"], f"the gateway must join {n}"
    assert any(not (networks[n] or {}).get("internal") for n in gw["networks"]), \
        "the gateway needs a non-internal network for its published port"
    assert gw["ports"] == ["8443:8443"], gw["ports"]

    # The config reaches the model by its compose service name and azmlinfsrv's port.
    backends = config["service"][0]["backends"]
    m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", backends[0])
    assert m and m.group(1) in services and m.group(1) == "model", backends
    assert f'"--port", "{m.group(2)}"' in model_dockerfile, "the model listens on the config's port"
    assert config["listen"]["address"].endswith(":8443")

    # The config folder is mounted read-only where SCOREGATE_CONFIG points; the state is a volume.
    env = re.search(r"^ENV SCOREGATE_CONFIG=(\S+)$", dockerfile, re.M)
    assert env, "the image sets SCOREGATE_CONFIG"
    config_dir = os.path.dirname(env.group(1))
    assert f".:{config_dir}:ro" in gw["volumes"], gw["volumes"]
    assert os.path.basename(env.group(1)) == "scoregate.toml"
    state_dir = config["state"]["dir"]
    assert f"state:{state_dir}" in gw["volumes"] and "state" in compose["volumes"]
    assert config["admin"]["token_file"].startswith(state_dir + "/"), \
        "the admin token is written at first start: it must be in the writable volume"
    assert config["admin"]["address"].startswith("127.0.0.1:"), "the admin API stays in the container"

    # docker's grace period covers the drain.
    grace = seconds(gw["stop_grace_period"])
    assert grace > seconds(config["server"]["drain_timeout"]), "stop_grace_period > drain_timeout"
    assert gw["depends_on"]["model"]["condition"] == "service_healthy"
    assert "HEALTHCHECK" in model_dockerfile

    # The gateway image checks itself with its own binary, through the admin API.
    hc = re.search(r"^HEALTHCHECK .*\n?.*CMD \[\"scoregate\", \"healthcheck\"", dockerfile, re.M)
    assert hc, "the gateway image has a HEALTHCHECK that runs `scoregate healthcheck`"
    assert re.search(r'^CMD \["serve"\]$', dockerfile, re.M), "the image serves SCOREGATE_CONFIG"
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)

    # What the README's Docker section names exists (the certificates excepted: the section's
    # first step makes them), and what the images COPY is in the build context.
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    docker_section = readme.split("\n## Docker\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(?<![\w.-])((?:deploy|certs-example|tests|scripts)/[\w./-]*\w)", docker_section))
    assert {"deploy/docker/compose.yml", "certs-example/make-certs.sh"} <= named, sorted(named)
    for path in sorted(named):
        if path.startswith("deploy/docker/certs"):
            continue
        assert os.path.exists(os.path.join(REPO, path)), f"the README names {path}, which does not exist"
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    for text in (dockerfile, model_dockerfile):
        for src in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
            assert src == "." or os.path.exists(os.path.join(REPO, src)), f"COPY {src}: no such file"
            assert not any(src == i or src.startswith(i.rstrip("/") + "/") for i in ignored), \
                f"COPY {src}: excluded by .dockerignore"
    # The dependency-caching stage builds against placeholders: every bench Cargo.toml names
    # must have one, or the manifest does not load and the image does not build.
    with open(os.path.join(REPO, "Cargo.toml")) as f:
        benches = re.findall(r'^\[\[bench\]\]\s*\nname = "([\w-]+)"', f.read(), re.M)
    assert benches, "Cargo.toml names benches"
    for name in benches:
        assert f"> benches/{name}.rs" in dockerfile, f"the Dockerfile's first stage has no benches/{name}.rs"

    # make-certs.sh writes the files the config names, where the README's step 1 puts them.
    with open(os.path.join(REPO, "certs-example", "make-certs.sh")) as f:
        make_certs = f.read()
    for entry in config["tls"]["certificates"]:
        for k in ("cert", "key"):
            rel = entry[k]
            assert rel.startswith("certs/"), rel
            assert os.path.basename(rel) in make_certs, f"make-certs.sh does not write {rel}"
    assert "OUT=deploy/docker/certs ./certs-example/make-certs.sh" in docker_section

    # The certificates made for the kit stay out of git and out of the build context.
    with open(os.path.join(REPO, ".dockerignore")) as f:
        assert "deploy/docker/certs" in f.read().split()
    with open(os.path.join(REPO, ".gitignore")) as f:
        assert "/deploy/docker/certs" in f.read().split()
    print("deploy/docker: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"deploy/docker: {e}", file=sys.stderr)
        sys.exit(1)
