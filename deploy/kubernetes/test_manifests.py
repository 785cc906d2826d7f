#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests in deploy/kubernetes.

Renders the base and the Redis overlay with `kubectl kustomize`, validates the output with
`kubernetes-validate --strict` against Kubernetes 1.32 (override: KUBERNETES_VERSION), and
asserts the invariants that keep the deployment safe to operate (see README.md next to this
file). Run it through scripts/check-kubernetes.sh, which provides a venv with
kubernetes-validate and PyYAML; extra arguments go to unittest (e.g. -k Redis).

When redis-server is installed (Debian: apt-get install redis-server), the overlay's redis.conf
and ACL file are also loaded into a throwaway Redis on 127.0.0.1, and the gateway's user is
tried against the commands it needs and some it must not have (ACL DRYRUN). Without
redis-server that one test is skipped.
"""

import base64
import hashlib
import os
import posixpath
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
TREES = {
    "base": os.path.join(HERE, "base"),
    "redis": os.path.join(HERE, "overlays", "redis"),
}
K8S_VERSION = os.environ.get("KUBERNETES_VERSION", "1.32.0")
KUBECTL = os.environ.get("KUBECTL", "kubectl")
GATEWAY = "scoregate"  # the Deployment's name

_rendered = {}


def rendered(tree):
    """The tree's `kubectl kustomize` output: (text, [documents])."""
    if tree not in _rendered:
        p = subprocess.run(
            [KUBECTL, "kustomize", TREES[tree]], capture_output=True, text=True
        )
        if p.returncode != 0:
            raise AssertionError(f"kubectl kustomize {TREES[tree]} failed:\n{p.stderr}")
        docs = [d for d in yaml.safe_load_all(p.stdout) if d]
        _rendered[tree] = (p.stdout, docs)
    return _rendered[tree]


def duration_seconds(s):
    """A scoregate duration ("25s", "500ms", "1h 30m") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", s)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)|\s", "", s):
        raise ValueError(f"not a duration: {s!r}")
    return sum(float(n) * units[u] for n, u in parts)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def selector_matches(match_labels, labels):
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


class Render:
    """One rendered tree, with lookups."""

    def __init__(self, tree):
        self.tree = tree
        self.text, self.docs = rendered(tree)

    def all(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind, name):
        for d in self.all(kind):
            if d["metadata"]["name"] == name:
                return d
        return None

    def generated(self, kind, name):
        """A resource by its name before kustomize's hash suffix (or exactly that name)."""
        for d in self.all(kind):
            n = d["metadata"]["name"]
            if n == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", n):
                return d
        return None

    @staticmethod
    def secret_text(secret, key):
        if key in (secret.get("stringData") or {}):
            return secret["stringData"][key]
        return base64.b64decode(secret["data"][key]).decode()


class Workload:
    """A Deployment or StatefulSet and its single container, with mount lookups."""

    def __init__(self, render, obj):
        self.render = render
        self.obj = obj
        self.pod = obj["spec"]["template"]["spec"]
        self.labels = obj["spec"]["template"]["metadata"].get("labels", {})
        self.annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
        assert len(self.pod["containers"]) == 1, "one container expected"
        self.container = self.pod["containers"][0]
        self.volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for t in obj["spec"].get("volumeClaimTemplates", []):
            self.volumes[t["metadata"]["name"]] = {"name": t["metadata"]["name"], "pvc": t}

    def port(self, name_or_number):
        if isinstance(name_or_number, int):
            return name_or_number
        for p in self.container.get("ports", []):
            if p.get("name") == name_or_number:
                return p["containerPort"]
        raise AssertionError(f"no container port named {name_or_number!r}")

    def mount_for(self, path):
        """(volumeMount, volume) of the mount that holds file `path` (the longest mountPath)."""
        best = None
        for m in self.container.get("volumeMounts", []):
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                    best = m
        if best is None:
            raise AssertionError(f"{path} is on no volume mount")
        return best, self.volumes[best["name"]]

    def file_source(self, path):
        """Checks that `path` is a file of a Secret/ConfigMap mounted as a whole directory;
        returns (kind, object name, key, the object if it is in the render)."""
        m, v = self.mount_for(path)
        mp = m["mountPath"].rstrip("/")
        assert not m.get("subPath") and not m.get("subPathExpr"), (
            f"{path}: mounted with subPath, which the kubelet never updates"
        )
        key = path[len(mp) + 1:]
        assert key and "/" not in key, f"{path} is not a file directly in {mp}"
        if "secret" in v:
            name = v["secret"]["secretName"]
            return "Secret", name, key, self.render.get("Secret", name)
        if "configMap" in v:
            name = v["configMap"]["name"]
            return "ConfigMap", name, key, self.render.get("ConfigMap", name)
        raise AssertionError(f"{path}: volume {v['name']} is neither a Secret nor a ConfigMap")

    def effective_security(self):
        """The container's security settings, container values over pod values."""
        eff = dict(self.pod.get("securityContext", {}))
        eff.update(self.container.get("securityContext", {}))
        return eff


class ManifestCase(unittest.TestCase):
    TREE = None

    @classmethod
    def setUpClass(cls):
        cls.r = Render(cls.TREE)


class Validation:
    def test_kubernetes_validate_strict(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(self.r.text)
        try:
            p = subprocess.run(
                [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                 "-k", K8S_VERSION, f.name],
                capture_output=True, text=True,
            )
        finally:
            os.unlink(f.name)
        out = (p.stdout + p.stderr).strip()
        self.assertEqual(p.returncode, 0, f"kubernetes-validate --strict -k {K8S_VERSION}:\n{out}")
        # --quiet prints only warnings and failures: a kind without a schema is only a warning.
        self.assertEqual(out, "", f"kubernetes-validate warned:\n{out}")


class GatewayChecks(Validation):
    """Invariants of the gateway's Deployment and its config; every tree must keep them."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        dep = cls.r.get("Deployment", GATEWAY)
        assert dep is not None, f"no Deployment {GATEWAY}"
        cls.w = Workload(cls.r, dep)
        args = cls.w.container.get("command", []) + cls.w.container.get("args", [])
        assert "--config" in args, "the container must name its config with --config"
        cls.config_path = args[args.index("--config") + 1]
        kind, name, key, cm = cls.w.file_source(cls.config_path)
        assert kind == "ConfigMap" and cm is not None, f"{cls.config_path} must come from a ConfigMap in the render"
        cls.config_map = cm
        cls.toml = tomllib.loads(cm["data"][key])

    # -- replicas and disruption budget ------------------------------------------------------

    def test_three_replicas(self):
        self.assertEqual(self.w.obj["spec"].get("replicas"), 3)

    def test_pod_disruption_budget_fits_replicas(self):
        replicas = self.w.obj["spec"]["replicas"]
        pdbs = [p for p in self.r.all("PodDisruptionBudget")
                if selector_matches(p["spec"]["selector"].get("matchLabels"), self.w.labels)]
        self.assertEqual(len(pdbs), 1, "exactly one PodDisruptionBudget must select the gateway pods")
        spec = pdbs[0]["spec"]
        self.assertGreater(replicas, 1, "a PDB on one replica blocks node drains forever")
        if "minAvailable" in spec:
            self.assertNotIn("maxUnavailable", spec)
            m = spec["minAvailable"]
            allowed = replicas - (m if isinstance(m, int) else -(-replicas * int(m.rstrip("%")) // 100))
        else:
            m = spec["maxUnavailable"]
            allowed = m if isinstance(m, int) else replicas * int(m.rstrip("%")) // 100
        self.assertGreaterEqual(allowed, 1, f"the PDB lets no pod go ({spec})")
        self.assertLess(allowed, replicas, f"the PDB lets every pod go ({spec})")

    # -- probes, ports, metrics ----------------------------------------------------------------

    def test_admin_and_listen_ports_match_config(self):
        self.assertEqual(self.w.port("admin"), port_of(self.toml["admin"]["address"]))
        self.assertEqual(self.w.port("https"), port_of(self.toml["listen"]["address"]))
        host = self.toml["admin"]["address"].rsplit(":", 1)[0]
        self.assertIn(host, ("0.0.0.0", "[::]"), "the kubelet and Prometheus must reach the admin port")

    def test_readiness_and_liveness_kept_apart(self):
        c = self.w.container
        rp, lp = c.get("readinessProbe"), c.get("livenessProbe")
        self.assertIsNotNone(rp, "no readinessProbe")
        self.assertIsNotNone(lp, "no livenessProbe")
        self.assertEqual(rp["httpGet"]["path"], "/readyz")
        self.assertEqual(lp["httpGet"]["path"], "/healthz")
        admin = port_of(self.toml["admin"]["address"])
        self.assertEqual(self.w.port(rp["httpGet"]["port"]), admin)
        self.assertEqual(self.w.port(lp["httpGet"]["port"]), admin)
        self.assertEqual(rp["httpGet"].get("scheme", "HTTP"), "HTTP")
        self.assertEqual(lp["httpGet"].get("scheme", "HTTP"), "HTTP")
        # Liveness must be the more patient one: a not-ready gateway is not a dead one.
        def patience(p):
            return p.get("periodSeconds", 10) * p.get("failureThreshold", 3)
        self.assertGreater(patience(lp), patience(rp))
        sp = c.get("startupProbe")
        if sp is not None:
            self.assertNotEqual(sp["httpGet"]["path"], "/readyz", "a startup probe on /readyz would restart a replica waiting for Redis")

    def test_prometheus_scrape_annotations(self):
        a = self.w.annotations
        self.assertEqual(a.get("prometheus.io/scrape"), "true")
        self.assertEqual(a.get("prometheus.io/port"), str(port_of(self.toml["admin"]["address"])))
        self.assertEqual(a.get("prometheus.io/path", "/metrics"), "/metrics")
        self.assertEqual(a.get("prometheus.io/scheme", "http"), "http")

    def test_service_exposes_scoring_only(self):
        svc = [s for s in self.r.all("Service") if selector_matches(s["spec"].get("selector"), self.w.labels)]
        self.assertEqual(len(svc), 1, "exactly one Service must select the gateway pods")
        targets = {self.w.port(p.get("targetPort", p["port"])) for p in svc[0]["spec"]["ports"]}
        self.assertEqual(targets, {port_of(self.toml["listen"]["address"])},
                         "the Service must expose the scoring port and never the admin port")

    def test_network_policy_limits_admin_port(self):
        admin = port_of(self.toml["admin"]["address"])
        pols = [p for p in self.r.all("NetworkPolicy")
                if selector_matches(p["spec"]["podSelector"].get("matchLabels"), self.w.labels)]
        self.assertTrue(pols, "no NetworkPolicy selects the gateway pods")
        for pol in pols:
            self.assertIn("Ingress", pol["spec"].get("policyTypes", ["Ingress"]))
            for rule in pol["spec"].get("ingress", []):
                ports = rule.get("ports")
                covers_admin = ports is None or any(
                    "port" not in p or self.w.port(p["port"]) == admin for p in ports)
                if covers_admin:
                    self.assertTrue(rule.get("from"),
                                    f"NetworkPolicy {pol['metadata']['name']} admits the admin port from anywhere")
                    for peer in rule["from"]:
                        self.assertNotIn("ipBlock", peer, "admin port opened to an ipBlock")

    # -- termination -------------------------------------------------------------------------

    def test_prestop_sleep_and_grace_period_cover_drain(self):
        pre = self.w.container.get("lifecycle", {}).get("preStop")
        self.assertIsNotNone(pre, "no preStop hook")
        if "sleep" in pre:
            sleep = pre["sleep"]["seconds"]
        else:
            cmd = pre.get("exec", {}).get("command", [])
            self.assertTrue(cmd and posixpath.basename(cmd[0]) == "sleep" and len(cmd) == 2,
                            f"preStop is not a sleep: {pre}")
            sleep = float(cmd[1])
        self.assertGreaterEqual(sleep, 1, "the preStop sleep must give endpoints time to update")
        self.assertIn("drain_timeout", self.toml.get("server", {}), "set [server] drain_timeout explicitly")
        drain = duration_seconds(self.toml["server"]["drain_timeout"])
        grace = self.w.pod.get("terminationGracePeriodSeconds", 30)
        self.assertGreater(grace, sleep + drain,
                           f"terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain_timeout {drain}")

    # -- security ----------------------------------------------------------------------------

    def test_restrictive_security_context(self):
        s = self.w.effective_security()
        self.assertIs(s.get("runAsNonRoot"), True)
        self.assertNotEqual(s.get("runAsUser", 10001), 0)
        self.assertIs(s.get("readOnlyRootFilesystem"), True)
        self.assertIs(s.get("allowPrivilegeEscalation"), False)
        self.assertNotEqual(s.get("privileged"), True)
        self.assertIn("ALL", s.get("capabilities", {}).get("drop", []))
        self.assertFalse(s.get("capabilities", {}).get("add"))
        self.assertEqual(s.get("seccompProfile", {}).get("type"), "RuntimeDefault")
        self.assertIs(self.w.pod.get("automountServiceAccountToken"), False)
        self.assertFalse(self.w.pod.get("hostNetwork") or self.w.pod.get("hostPID") or self.w.pod.get("hostIPC"))

    def test_resource_requests(self):
        req = self.w.container.get("resources", {}).get("requests", {})
        self.assertIn("cpu", req)
        self.assertIn("memory", req)

    # -- files: certificate, secrets, state ----------------------------------------------------

    def test_tls_secret_mounted_as_directory(self):
        self.assertIs(self.toml.get("server", {}).get("watch"), True,
                      "[server] watch = true, or certificate renewals are never picked up")
        certs = self.toml["tls"]["certificates"]
        self.assertTrue(certs)
        for c in certs:
            kc, nc, keyc, objc = self.w.file_source(c["cert"])
            kk, nk, keyk, objk = self.w.file_source(c["key"])
            self.assertEqual((kc, kk), ("Secret", "Secret"))
            self.assertEqual(nc, nk, "certificate and key must come from one Secret")
            self.assertEqual((keyc, keyk), ("tls.crt", "tls.key"), "cert-manager's kubernetes.io/tls shape")
            if objc is not None:
                self.assertEqual(objc.get("type"), "kubernetes.io/tls")

    def test_credentials_come_from_secrets(self):
        redis = self.toml["state"]["redis"]
        self.assertNotIn("url", redis, "the Redis URL (with its password) belongs in a Secret: use url_file")
        for what, path in (("admin.token_file", self.toml["admin"]["token_file"]),
                           ("state.redis.url_file", redis["url_file"]),
                           ("state.redis.secret_key_file", redis["secret_key_file"])):
            kind, name, key, obj = self.w.file_source(path)
            self.assertEqual(kind, "Secret", f"{what} = {path} is not from a Secret")
            self.assertIsNotNone(obj, f"{what}: Secret {name} is not in the render")
            self.assertIn(key, obj.get("data", {}) | obj.get("stringData", {}),
                          f"{what}: Secret {name} has no key {key}")
            value = Render.secret_text(obj, key).strip()
            for cm in self.r.all("ConfigMap"):
                for k, text in (cm.get("data") or {}).items():
                    self.assertNotIn(value, text, f"the value of {what} appears in ConfigMap {cm['metadata']['name']}")
        for env in self.w.container.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref or "value" in env:
                self.assertNotRegex(env["name"], r"(?i)token|password|secret|key",
                                    "a credential in a plain or ConfigMap environment variable")

    def test_state_dir_writable_on_read_only_root(self):
        self.assertIs(self.w.effective_security().get("readOnlyRootFilesystem"), True)
        self.assertEqual(self.toml["state"].get("store"), "redis")
        state_dir = self.toml["state"]["dir"]
        m, v = self.w.mount_for(state_dir + "/services.json")
        self.assertEqual(m["mountPath"].rstrip("/"), state_dir.rstrip("/"))
        self.assertIn("emptyDir", v, "with store = redis, state.dir is this replica's cache: an emptyDir")
        self.assertFalse(m.get("readOnly"), "state.dir must be writable")
        self.assertFalse(m.get("subPath"))


class RedisChecks:
    """The overlay's Redis: persistence and an ACL restricted to the gateway's prefix."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        gw = Workload(cls.r, cls.r.get("Deployment", GATEWAY))
        args = gw.container.get("args", [])
        _, _, key, cm = gw.file_source(args[args.index("--config") + 1])
        cls.gateway = gw
        cls.toml = tomllib.loads(cm["data"][key])
        sts = [s for s in cls.r.all("StatefulSet")
               if "redis" in s["spec"]["template"]["spec"]["containers"][0]["image"]]
        assert len(sts) == 1, "one Redis StatefulSet expected"
        cls.w = Workload(cls.r, sts[0])
        cmd = cls.w.container.get("command", []) + cls.w.container.get("args", [])
        confs = [a for a in cmd if a.endswith(".conf")]
        assert len(confs) == 1, f"redis-server must be started with its config file: {cmd}"
        kind, name, key, obj = cls.w.file_source(confs[0])
        assert kind == "ConfigMap" and obj is not None
        cls.redis_conf_text = obj["data"][key]
        cls.conf = {}
        for line in cls.redis_conf_text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition(" ")
                cls.conf[k.lower()] = v.strip()
        kind, name, key, obj = cls.w.file_source(cls.conf["aclfile"])
        assert kind == "Secret", "the ACL file (password hashes) must come from a Secret"
        cls.acl_text = Render.secret_text(obj, key)
        cls.acl = {}
        for line in cls.acl_text.splitlines():
            words = line.split()
            if words:
                assert words[0] == "user", f"not an ACL user line: {line!r}"
                cls.acl[words[1]] = words[2:]
        _, _, ukey, uobj = gw.file_source(cls.toml["state"]["redis"]["url_file"])
        cls.url = urllib.parse.urlsplit(Render.secret_text(uobj, ukey).strip())

    def test_one_redis_with_persistent_volume(self):
        self.assertEqual(self.w.obj["spec"].get("replicas", 1), 1)
        self.assertEqual(self.conf.get("appendonly"), "yes")
        self.assertNotEqual(self.conf.get("appendfsync"), "no")
        self.assertEqual(self.conf.get("maxmemory-policy", "noeviction"), "noeviction",
                         "Redis must never evict the gateway's keys")
        m, v = self.w.mount_for(self.conf["dir"] + "/appendonly.aof")
        self.assertEqual(m["mountPath"].rstrip("/"), self.conf["dir"].rstrip("/"))
        self.assertIn("pvc", v, "the Redis data directory must be a PersistentVolumeClaim template")
        self.assertFalse(m.get("readOnly"))

    def test_redis_security_context(self):
        s = self.w.effective_security()
        self.assertIs(s.get("runAsNonRoot"), True)
        self.assertIs(s.get("readOnlyRootFilesystem"), True)
        self.assertIs(s.get("allowPrivilegeEscalation"), False)
        self.assertIn("ALL", s.get("capabilities", {}).get("drop", []))
        req = self.w.container.get("resources", {}).get("requests", {})
        self.assertIn("cpu", req)
        self.assertIn("memory", req)

    def test_default_user_off(self):
        rules = self.acl.get("default")
        self.assertIsNotNone(rules, "the ACL file must turn the default user off explicitly")
        self.assertIn("off", rules)
        self.assertNotIn("on", rules)
        self.assertNotIn("nopass", rules)

    def test_acl_limits_gateway_user_to_prefix(self):
        prefix = self.toml["state"]["redis"]["prefix"]
        self.assertTrue(prefix, "[state.redis] prefix is required")
        user = self.url.username
        self.assertEqual(set(self.acl), {"default", user}, "only the default user (off) and the gateway's user")
        rules = self.acl[user]
        self.assertIn("on", rules)
        keys = [r for r in rules if r.startswith(("~", "%")) or r in ("allkeys", "resetkeys")]
        chans = [r for r in rules if r.startswith("&") or r in ("allchannels", "resetchannels")]
        self.assertEqual([k for k in keys if k != "resetkeys"], [f"~{prefix}*"])
        self.assertEqual([c for c in chans if c != "resetchannels"], [f"&{prefix}*"])
        cmds = [r for r in rules if r[:1] in "+-" or r in ("allcommands", "nocommands")]
        self.assertEqual(cmds[0], "-@all", "the command rules must start from nothing")
        for bad in ("+@all", "allcommands", "+@dangerous", "+@admin", "+keys", "+flushall",
                    "+flushdb", "+config", "+@keyspace"):
            self.assertNotIn(bad, rules)
        self.assertIn("-@dangerous", rules)
        self.assertLess(max(i for i, r in enumerate(cmds) if r.startswith("+@")), cmds.index("-@dangerous"),
                        "-@dangerous must come after every category it trims")

    def test_gateway_url_matches_acl_and_service(self):
        self.assertIn(self.url.scheme, ("redis", "rediss"))
        rules = self.acl[self.url.username]
        self.assertFalse([r for r in rules if r.startswith(">") or r == "nopass"],
                         "store the password as #<sha256>, never in clear text or nopass")
        hashes = [r[1:] for r in rules if r.startswith("#")]
        password = urllib.parse.unquote(self.url.password or "")
        self.assertEqual(hashes, [hashlib.sha256(password.encode()).hexdigest()],
                         "the ACL's password hash must be the SHA-256 of the URL's password")
        host = self.url.hostname.split(".")[0]
        svc = self.r.get("Service", host)
        self.assertIsNotNone(svc, f"the Redis URL names {self.url.hostname}, which is not a Service here")
        self.assertTrue(selector_matches(svc["spec"]["selector"], self.w.labels))
        port = self.url.port or 6379
        self.assertIn(port, [p["port"] for p in svc["spec"]["ports"]])
        self.assertIn(int(self.conf.get("port", 6379)),
                      [self.w.port(p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]])

    def test_network_policy_admits_only_gateway_to_redis(self):
        pols = [p for p in self.r.all("NetworkPolicy")
                if selector_matches(p["spec"]["podSelector"].get("matchLabels"), self.w.labels)]
        self.assertTrue(pols, "no NetworkPolicy selects the Redis pod")
        for pol in pols:
            for rule in pol["spec"].get("ingress", []):
                self.assertTrue(rule.get("from"), "Redis admits connections from anywhere")
                for peer in rule["from"]:
                    self.assertNotIn("namespaceSelector", peer)
                    self.assertNotIn("ipBlock", peer)
                    self.assertTrue(selector_matches(peer["podSelector"].get("matchLabels"),
                                                     self.gateway.labels))

    # Commands the gateway uses (CONTRACT section 6), and ones its user must not have.
    ALLOWED = [
        "GET {p}k", "SET {p}k v", "DEL {p}k", "EXISTS {p}k", "EXPIRE {p}k 10", "PEXPIRE {p}k 10",
        "SCAN 0 MATCH {p}* COUNT 100", "MGET {p}a {p}b", "HGET {p}h f", "HSET {p}h f v",
        "HGETALL {p}h", "HDEL {p}h f", "EVAL return 1 {p}k", "EVALSHA " + "0" * 40 + " 1 {p}k",
        "SCRIPT LOAD return", "SCRIPT EXISTS " + "0" * 40, "PUBLISH {p}changes x",
        "SUBSCRIBE {p}changes", "PSUBSCRIBE {p}*", "UNSUBSCRIBE {p}changes", "PUNSUBSCRIBE {p}*",
        "PING", "TIME", "INFO", "CLIENT SETNAME scoregate", "CLIENT ID", "CLIENT TRACKING ON",
        "HELLO 3", "SELECT 0", "MULTI", "EXEC", "WATCH {p}k",
    ]
    DENIED = [
        "GET other", "SET other v", "DEL other", "EVAL return 1 other", "MGET {p}a other",
        "KEYS {p}*", "FLUSHALL", "FLUSHDB", "CONFIG GET *", "CONFIG SET dir /tmp", "SHUTDOWN",
        "MONITOR", "DEBUG SLEEP 0", "SWAPDB 0 1", "CLIENT LIST", "CLIENT KILL ID 1", "ACL LIST",
        "PUBLISH other x", "SUBSCRIBE other", "PSUBSCRIBE *", "SCRIPT FLUSH", "SCRIPT KILL",
        "FUNCTION FLUSH", "FUNCTION LIST", "REPLICAOF no one", "SAVE", "BGREWRITEAOF",
    ]

    def test_acl_against_a_real_redis(self):
        server = shutil.which("redis-server")
        if server is None:
            self.skipTest("redis-server is not installed (apt-get install redis-server)")
        prefix = self.toml["state"]["redis"]["prefix"]
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "redis.conf")
            acl = os.path.join(tmp, "users.acl")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            # The rendered redis.conf with this machine's paths and a loopback port.
            local = {"dir": tmp, "aclfile": acl, "port": str(port), "bind": "127.0.0.1",
                     "logfile": os.path.join(tmp, "log"), "daemonize": "no"}
            lines = []
            for line in self.redis_conf_text.splitlines():
                k = line.strip().split(" ", 1)[0].lower()
                lines.append(f"{k} {local[k]}" if k in local and not line.startswith("#") else line)
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            with open(acl, "w") as f:
                # The rendered ACL, plus a user for this test that may run ACL DRYRUN.
                f.write(self.acl_text.rstrip("\n") + "\nuser k8s-test on >k8s-test ~* &* +@all\n")
            proc = subprocess.Popen(
                [server, conf],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                admin = _Resp.connect(port, proc, os.path.join(tmp, "log"))
                self.assertEqual(admin.call("AUTH", "k8s-test", "k8s-test"), "OK")
                gw = _Resp.connect(port, proc, os.path.join(tmp, "log"))
                self.assertTrue(gw.call("PING").startswith("NOAUTH"), "the default user must be off")
                self.assertTrue(gw.call("AUTH", "default", "").startswith(("WRONGPASS", "ERR")))
                password = urllib.parse.unquote(self.url.password)
                self.assertEqual(gw.call("AUTH", self.url.username, password), "OK",
                                 "the URL's credentials must log in")
                self.assertEqual(gw.call("SET", prefix + "k", "v"), "OK")
                self.assertTrue(gw.call("GET", "other").startswith("NOPERM"))
                for cmd in self.ALLOWED:
                    argv = cmd.format(p=prefix).split()
                    self.assertEqual(admin.call("ACL", "DRYRUN", self.url.username, *argv), "OK",
                                     f"the gateway's user cannot run: {' '.join(argv)}")
                for cmd in self.DENIED:
                    argv = cmd.format(p=prefix).split()
                    self.assertNotEqual(admin.call("ACL", "DRYRUN", self.url.username, *argv), "OK",
                                        f"the gateway's user may run: {' '.join(argv)}")
                admin.close()
                gw.close()
            finally:
                proc.terminate()
                proc.wait(timeout=10)


class _Resp:
    """Just enough of RESP2 to send commands and read simple replies."""

    def __init__(self, sock):
        self.sock = sock
        self.f = sock.makefile("rb")

    @classmethod
    def connect(cls, port, proc, log):
        deadline = time.monotonic() + 10
        while True:
            try:
                return cls(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = open(log).read() if os.path.exists(log) else ""
                    raise AssertionError(f"redis-server did not start with the overlay's config:\n{text[-2000:]}")
                time.sleep(0.05)

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.f.readline().rstrip(b"\r\n")
        t, rest = line[:1], line[1:].decode()
        if t in (b"+", b"-"):
            return rest
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2].decode()
        if t == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise AssertionError(f"unexpected reply from redis: {line!r}")

    def close(self):
        self.f.close()
        self.sock.close()


class Examples(unittest.TestCase):
    """The examples outside the rendered trees agree with them."""

    def test_readme_acl_matches_overlay(self):
        r = Render("redis")
        acl = Render.secret_text(r.generated("Secret", "scoregate-redis-acl"), "users.acl")
        rules = [line.split()[4:] for line in acl.splitlines() if line.startswith("user scoregate ")]
        with open(os.path.join(HERE, "README.md")) as f:
            readme = f.read()
        shown = re.findall(r"user scoregate on #\S+ (.*?)(?:\\n|$)", readme, re.M)
        self.assertGreaterEqual(len(shown), 2, "README.md shows the ACL line and how to make it")
        for line in shown:
            self.assertEqual(line.split(), rules[0], "README.md's ACL rules differ from the overlay's")

    def test_certificate_matches_deployment(self):
        with open(os.path.join(HERE, "examples", "certificate.yaml")) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        certs = [d for d in docs if d["kind"] == "Certificate"]
        self.assertEqual(len(certs), 1)
        r = Render("base")
        w = Workload(r, r.get("Deployment", GATEWAY))
        args = w.container["args"]
        _, _, key, cm = w.file_source(args[args.index("--config") + 1])
        toml = tomllib.loads(cm["data"][key])
        first = toml["tls"]["certificates"][0]
        _, secret, _, _ = w.file_source(first["cert"])
        self.assertEqual(certs[0]["spec"]["secretName"], secret)
        self.assertIn(first["cname"], certs[0]["spec"]["dnsNames"])


class Base(GatewayChecks, ManifestCase):
    TREE = "base"


class RedisOverlay(GatewayChecks, ManifestCase):
    TREE = "redis"


class RedisOverlayRedis(RedisChecks, ManifestCase):
    TREE = "redis"


if __name__ == "__main__":
    unittest.main(verbosity=2)
