#!/usr/bin/env python3
"""Checks the checker: breaks the manifests one way at a time and expects test_manifests.py to
fail each time (and to pass on the untouched copy, and on changes that are fine).

Slow (one render and validation per mutation, about a minute and a half), so not part of CI.
Run it with the venv that scripts/check-kubernetes.sh makes, after changing test_manifests.py:

    ~/.cache/scoregate-k8s-venv/bin/python deploy/kubernetes/mutations.py [NAME-SUBSTRING]
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEP = "base/deployment.yaml"
TOML = "base/scoregate.toml"
ACL = "overlays/redis/secrets/users.acl"
REDIS = "overlays/redis/redis.yaml"
CONF = "overlays/redis/redis.conf"

# (name, file, regex, replacement, expect_failure)
MUTATIONS = [
    ("replicas 1", DEP, r"replicas: 3", "replicas: 1", True),
    ("replicas 2", DEP, r"replicas: 3", "replicas: 2", True),
    ("readiness on /healthz", DEP, r"path: /readyz", "path: /healthz", True),
    ("liveness on /readyz", DEP, r"(livenessProbe:\n\s+httpGet:\n\s+)path: /healthz", r"\1path: /readyz", True),
    ("no readiness probe", DEP, r"readinessProbe:", "readinessGone:", True),
    ("probe on the scoring port", DEP, r"(readinessProbe:\n\s+httpGet:\n\s+path: /readyz\n\s+)port: admin", r"\1port: https", True),
    ("liveness as quick as readiness", DEP, r"failureThreshold: 6", "failureThreshold: 1", True),
    ("startup probe on /readyz", DEP, r"(startupProbe:\n\s+httpGet:\n\s+)path: /healthz", r"\1path: /readyz", True),
    ("no preStop", DEP, r"\n\s+preStop:\n\s+sleep:\n\s+seconds: 5", "", True),
    ("preStop sleep too long", DEP, r"seconds: 5\n", "seconds: 15\n", True),
    ("grace period 30", DEP, r"terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 30", True),
    ("drain_timeout 40s", TOML, r'drain_timeout = "25s"', 'drain_timeout = "40s"', True),
    ("drain_timeout unset", TOML, r'drain_timeout = "25s"', "", True),
    ("PDB maxUnavailable 0", "base/pdb.yaml", r"maxUnavailable: 1", "maxUnavailable: 0", True),
    ("PDB minAvailable 3", "base/pdb.yaml", r"maxUnavailable: 1", "minAvailable: 3", True),
    ("PDB selects nothing", "base/pdb.yaml", r"(matchLabels:\n\s+app.kubernetes.io/name:) scoregate", r"\1 other", True),
    ("runAsNonRoot false", DEP, r"runAsNonRoot: true", "runAsNonRoot: false", True),
    ("runAsUser 0", DEP, r"runAsUser: 10001", "runAsUser: 0", True),
    ("root fs writable", DEP, r"readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", True),
    ("privilege escalation", DEP, r"allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", True),
    ("capabilities kept", DEP, r'drop: \["ALL"\]', 'drop: ["NET_RAW"]', True),
    ("capability added", DEP, r'drop: \["ALL"\]', 'drop: ["ALL"]\n              add: ["NET_BIND_SERVICE"]', True),
    ("no seccomp", DEP, r"\n\s+seccompProfile:\n\s+type: RuntimeDefault", "", True),
    ("service account token", DEP, r"automountServiceAccountToken: false", "automountServiceAccountToken: true", True),
    ("no requests", DEP, r"\n\s+requests:\n\s+cpu: 100m\n\s+memory: 128Mi", "", True),
    ("scrape off", DEP, r'prometheus.io/scrape: "true"', 'prometheus.io/scrape: "false"', True),
    ("scrape port wrong", DEP, r'prometheus.io/port: "9090"', 'prometheus.io/port: "8443"', True),
    ("scrape path wrong", DEP, r"prometheus.io/path: /metrics", "prometheus.io/path: /v1/metrics", True),
    ("admin on loopback", TOML, r'address = "0.0.0.0:9090"', 'address = "127.0.0.1:9090"', True),
    ("admin port moved", TOML, r'address = "0.0.0.0:9090"', 'address = "0.0.0.0:9091"', True),
    ("Service exposes admin", "base/service.yaml", r"(targetPort: https\n\s+protocol: TCP\n)",
     r"\1    - name: admin\n      port: 9090\n      targetPort: admin\n", True),
    ("NetworkPolicy opens admin", "base/networkpolicy.yaml", r"- from:\n\s+- namespaceSelector:\n\s+matchLabels:\n\s+kubernetes.io/metadata.name: monitoring\n\s+ports:", "- ports:", True),
    ("NetworkPolicy gone", "base/kustomization.yaml", r"  - networkpolicy.yaml\n", "", True),
    ("TLS via subPath", DEP, r"- name: tls\n(\s+)mountPath: /etc/scoregate/tls\n",
     r"- name: tls\n\1mountPath: /etc/scoregate/tls/tls.crt\n\1subPath: tls.crt\n", True),
    ("TLS not tls.crt", TOML, r'cert = "/etc/scoregate/tls/tls.crt"', 'cert = "/etc/scoregate/tls/fullchain.pem"', True),
    ("watch off", TOML, r"watch = true", "watch = false", True),
    ("token in ConfigMap", TOML, r'token_file = "/etc/scoregate/admin/token"', 'token_file = "/etc/scoregate/config/token"', True),
    ("redis url inline", TOML, r'(url_file = .*\n)', r'\1url = "redis://scoregate:x@redis:6379/0"\n', True),
    ("store key path wrong", TOML, r'secret_key_file = "/etc/scoregate/store-key/key"', 'secret_key_file = "/etc/scoregate/store-key/store-key"', True),
    ("state dir read-only", DEP, r"(- name: state\n\s+mountPath: /var/lib/scoregate)\n", r"\1\n              readOnly: true\n", True),
    ("state dir on root fs", TOML, r'dir = "/var/lib/scoregate"', 'dir = "/var/tmp/scoregate"', True),
    ("schema typo", DEP, r"readOnlyRootFilesystem: true", "readOnlyRootFilesytem: true", True),
    ("redis no AOF", CONF, r"appendonly yes", "appendonly no", True),
    ("redis evicts", CONF, r"maxmemory-policy noeviction", "maxmemory-policy allkeys-lru", True),
    ("redis data on emptyDir", REDIS, r"  volumeClaimTemplates:\n(.*\n)*?\s+storage: 1Gi\n", "", True),
    ("redis as root", REDIS, r"runAsNonRoot: true", "runAsNonRoot: false", True),
    ("redis open to all", REDIS, r"- from:\n\s+- podSelector:\n\s+matchLabels:\n\s+app.kubernetes.io/name: scoregate\n\s+ports:", "- ports:", True),
    ("ACL all keys", ACL, r"~scoregate:\*", "~*", True),
    ("ACL other prefix", ACL, r"~scoregate:\*", "~prod:*", True),
    ("ACL all channels", ACL, r"&scoregate:\*", "allchannels", True),
    ("ACL default on", ACL, r"user default off", "user default on nopass", True),
    ("ACL no -@dangerous", ACL, r" -@dangerous", "", True),
    ("ACL +@all", ACL, r"-@all", "+@all", True),
    ("ACL plain password", ACL, r"#[0-9a-f]{64}", ">CHANGE-ME-example-redis-password", True),
    ("ACL wrong password", "overlays/redis/secrets/redis-url", r"CHANGE-ME-example-redis-password", "other-password", True),
    ("ACL +keys after -@dangerous", ACL, r"-@dangerous", "-@dangerous +keys", True),
    ("ACL without pubsub", ACL, r" \+@pubsub", "", True),
    ("ACL typo (redis refuses the file)", ACL, r"\+@scripting", "+@scriptin", True),
    ("URL names another host", "overlays/redis/secrets/redis-url", r"@scoregate-redis:", "@redis:", True),
    ("README shows another ACL", "README.md", r"(printf 'user default off\\nuser scoregate on #%s resetkeys resetchannels) ~scoregate:\*", r"\1 ~*", True),
    ("certificate for another name", "examples/certificate.yaml", r"- scoring.example.com", "- other.example.com", True),
    # Changes that are fine: the checks must not fail on them.
    ("preStop as exec sleep (fine)", DEP, r"sleep:\n(\s+)seconds: 5",
     r'exec:\n\1command: ["/bin/sleep", "5"]', False),
    ("minAvailable 2 (fine)", "base/pdb.yaml", r"maxUnavailable: 1", "minAvailable: 2", False),
    ("longer grace period (fine)", DEP, r"terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 60", False),
]


def run(tree):
    return subprocess.run([sys.executable, os.path.join(tree, "test_manifests.py")],
                          capture_output=True, text=True)


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        clean = os.path.join(tmp, "clean")
        shutil.copytree(HERE, clean, ignore=shutil.ignore_patterns("__pycache__"))
        p = run(clean)
        if p.returncode != 0:
            print(p.stdout + p.stderr)
            sys.exit("the untouched manifests fail: fix that first")
        print("untouched: pass")
        for name, path, pattern, repl, expect_fail in MUTATIONS:
            if only not in name:
                continue
            tree = os.path.join(tmp, "m")
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(clean, tree)
            f = os.path.join(tree, path)
            text = open(f).read()
            new, n = re.subn(pattern, repl, text, count=1)
            if n == 0:
                print(f"{name}: the pattern no longer matches {path}")
                bad += 1
                continue
            open(f, "w").write(new)
            p = run(tree)
            failed = sorted(set(re.findall(r"^(?:FAIL|ERROR): (\w+)", p.stdout + p.stderr, re.M)))
            ok = (p.returncode != 0) == expect_fail
            bad += not ok
            verdict = "caught by " + ", ".join(failed) if p.returncode else "passes"
            print(f"{'ok  ' if ok else 'BAD '} {name}: {verdict}")
    if bad:
        sys.exit(f"{bad} mutation(s) not handled as expected")


if __name__ == "__main__":
    main()
