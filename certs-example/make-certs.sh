#!/usr/bin/env bash
# make-certs.sh - a throwaway CA and a server certificate for trying scoregate with your own
# config. Not for production: use a certificate from your CA (certs-example/README.md).
#
#   ./certs-example/make-certs.sh [NAME ...]           a new CA and a leaf (default: scoring.example.com)
#   ./certs-example/make-certs.sh --renew [NAME ...]   a new leaf under the CA already in OUT
#
# Every NAME goes into the certificate's subject alternative names (a DNS name, a wildcard like
# *.example.com, or an IP address); the first one is also the subject CN and is what `cname =`
# in the config names. `localhost` and `127.0.0.1` are added too, so that clients on this
# machine can call https://localhost:8443/... without --resolve (LOCAL=0 leaves them out).
# ECDSA P-256 keys by default; RSA=1 makes the server key RSA 2048 (the CA stays ECDSA P-256).
# Validity: the leaf 397 days (the most browsers accept for a server certificate), the CA 10
# years, so that leaves can be renewed under it.
#
# --renew keeps ca.pem and ca-key.pem (clients that trust ca.pem go on trusting the new leaf) and
# replaces the leaf and its key; without NAMEs it keeps the current leaf's names. Then reload
# the gateway (scoregate reload, SIGHUP, or [server] watch = true).
#
# Writes into certs-example/out/ (OUT=dir to change it), replacing what is there:
#   ca.pem          the throwaway CA certificate: what clients trust (curl --cacert, verify=)
#   ca-key.pem      its private key (0600)
#   cert.pem        the server (leaf) certificate alone
#   fullchain.pem   leaf first, then the CA: what `cert =` takes
#   key.pem         the server key, PKCS#8 PEM, no password (0600): what `key =` takes
#
# Needs only openssl (1.1.1 or 3.x).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$HERE/out}"
RSA="${RSA:-0}"
LOCAL="${LOCAL:-1}"
DAYS=397
CA_DAYS=3650

die() { echo "make-certs: $*" >&2; exit 1; }
lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }   # (bash 3.2 has no ${x,,})

command -v openssl >/dev/null 2>&1 || die "openssl is needed (apt-get install openssl)"
[[ "$RSA" == 0 || "$RSA" == 1 ]] || die "RSA must be 0 or 1, not '$RSA'"
[[ "$LOCAL" == 0 || "$LOCAL" == 1 ]] || die "LOCAL must be 0 or 1, not '$LOCAL'"

renew=0
if [[ "${1:-}" == "--renew" ]]; then
    renew=1
    shift
fi
for a in "$@"; do
    [[ "$a" != -* ]] || die "unknown option '$a' (usage: make-certs.sh [--renew] [NAME ...])"
done

if [[ "$renew" == 1 ]]; then
    [[ -f "$OUT/ca.pem" && -f "$OUT/ca-key.pem" ]] \
        || die "--renew needs the CA from an earlier run: $OUT/ca.pem and $OUT/ca-key.pem (run without --renew for a new CA)"
    openssl x509 -in "$OUT/ca.pem" -noout -checkend 86400 >/dev/null \
        || die "the CA in $OUT/ca.pem has expired (or does within a day): run without --renew for a new CA"
    cmp -s <(openssl pkey -in "$OUT/ca-key.pem" -pubout) <(openssl x509 -in "$OUT/ca.pem" -noout -pubkey) \
        || die "$OUT/ca-key.pem does not belong to $OUT/ca.pem"
    if [[ $# -eq 0 ]]; then
        [[ -f "$OUT/cert.pem" ]] || die "--renew without NAMEs takes the names of $OUT/cert.pem, which does not exist"
        # "DNS:a, DNS:b, IP Address:127.0.0.1" on the line after the extension's title
        current="$(openssl x509 -in "$OUT/cert.pem" -noout -ext subjectAltName | sed -n 2p)"
        [[ -n "$current" ]] || die "$OUT/cert.pem has no subject alternative names to renew"
        IFS=',' read -r -a parts <<<"$current"
        names=()
        for p in "${parts[@]}"; do
            p="${p#"${p%%[![:space:]]*}"}"   # leading blanks
            p="${p#DNS:}"
            p="${p#IP Address:}"
            names+=("$p")
        done
        set -- "${names[@]}"
    fi
fi

if [[ $# -eq 0 ]]; then
    set -- scoring.example.com
fi
if [[ "$LOCAL" == 1 ]]; then
    set -- "$@" localhost 127.0.0.1
fi

is_ipv4() { [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; }
is_ipv6() { [[ "$1" == *:* && "$1" =~ ^[0-9A-Fa-f:.]+$ ]]; }
is_dns() {
    # Letters, digits, hyphens and dots; at most one leading "*." (a wildcard covers one label).
    local n="${1#\*.}"
    [[ ${#1} -le 253 && "$n" =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$ ]]
}

sans=()
for name in "$@"; do
    if is_ipv4 "$name" || is_ipv6 "$name"; then
        san="IP:$name"
    elif is_dns "$name"; then
        san="DNS:$(lower "$name")"
    else
        die "'$name' is not a DNS name (e.g. scoring.example.com, *.example.com) or an IP address"
    fi
    dup=0
    for s in ${sans[@]+"${sans[@]}"}; do
        [[ "$s" == "$san" ]] && dup=1
    done
    [[ "$dup" == 1 ]] || sans+=("$san")
done
cn="$(lower "$1")"
san_list="$(IFS=,; echo "${sans[*]}")"

# Work in a temp dir and move the finished set into place at the end, so a failure never leaves
# a key that does not belong to the certificate next to it.
umask 077
work="$(mktemp -d "${TMPDIR:-/tmp}/make-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

ossl() {   # openssl, quiet unless it fails
    local log="$work/openssl.log"
    if ! openssl "$@" >"$log" 2>&1; then
        cat "$log" >&2
        die "openssl $1 failed"
    fi
}

cat >"$work/openssl.cnf" <<EOF
[ req ]
distinguished_name = dn
prompt             = no
[ dn ]
CN = placeholder
[ v3_ca ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
[ v3_leaf ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature$([[ "$RSA" == 1 ]] && echo ", keyEncipherment")
extendedKeyUsage       = serverAuth
subjectAltName         = $san_list
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
EOF

serial() { echo "0x$(openssl rand -hex 16)"; }

if [[ "$renew" == 1 ]]; then
    # The CA stays: clients that trust ca.pem trust the new leaf.
    cp "$OUT/ca.pem" "$OUT/ca-key.pem" "$work/"
else
    # The CA: ECDSA P-256, self-signed.
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca-key.pem"
    ossl req -config "$work/openssl.cnf" -new -x509 -sha256 -days "$CA_DAYS" -set_serial "$(serial)" \
        -key "$work/ca-key.pem" -subj "/CN=scoregate example CA (throwaway)" \
        -extensions v3_ca -out "$work/ca.pem"
fi

# The server key (genpkey writes unencrypted PKCS#8) and certificate, signed by the CA.
if [[ "$RSA" == 1 ]]; then
    ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem"
    keytype="RSA 2048"
else
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/key.pem"
    keytype="ECDSA P-256"
fi
ossl req -config "$work/openssl.cnf" -new -sha256 -key "$work/key.pem" -subj "/CN=$cn" \
    -out "$work/leaf.csr"
ossl x509 -req -sha256 -days "$DAYS" -set_serial "$(serial)" -in "$work/leaf.csr" \
    -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" \
    -extfile "$work/openssl.cnf" -extensions v3_leaf -out "$work/cert.pem"
cat "$work/cert.pem" "$work/ca.pem" >"$work/fullchain.pem"

# Check before installing: the chain verifies and the key belongs to the certificate.
verify="$(openssl verify -CAfile "$work/ca.pem" "$work/cert.pem" 2>&1)" \
    || { echo "$verify" >&2; die "the new chain does not verify"; }
cmp -s <(openssl pkey -in "$work/key.pem" -pubout) <(openssl x509 -in "$work/cert.pem" -noout -pubkey) \
    || die "the new key does not match the new certificate"

(umask 022 && mkdir -p "$OUT")   # the folder is ordinary; only the two keys are private
chmod 0644 "$work/ca.pem" "$work/cert.pem" "$work/fullchain.pem"
chmod 0600 "$work/ca-key.pem" "$work/key.pem"
for f in ca.pem ca-key.pem cert.pem fullchain.pem key.pem; do
    mv -f "$work/$f" "$OUT/$f"
done
OUT="$(cd "$OUT" && pwd)"

if [[ "$renew" == 1 ]]; then
    echo "renewed the leaf under the same CA (throwaway, not for production); reload the gateway:"
    echo "  $OUT/ca.pem          CA certificate, unchanged: clients keep trusting it"
    echo "  $OUT/ca-key.pem      CA key, unchanged (0600)"
else
    echo "wrote (throwaway CA, not for production):"
    echo "  $OUT/ca.pem          CA certificate: what clients trust (curl --cacert, requests verify=)"
    echo "  $OUT/ca-key.pem      CA key (0600)"
fi
echo "  $OUT/cert.pem        server certificate ($keytype)"
echo "  $OUT/fullchain.pem   server certificate + CA: the config's cert ="
echo "  $OUT/key.pem         server key, PKCS#8, no password (0600): the config's key ="
echo "subject  CN=$cn"
echo "SANs     ${sans[*]}"
echo "serial   $(openssl x509 -in "$OUT/cert.pem" -noout -serial | cut -d= -f2)"
echo "expires  $(openssl x509 -in "$OUT/cert.pem" -noout -enddate | cut -d= -f2)"
echo "verify   $(openssl verify -CAfile "$OUT/ca.pem" "$OUT/cert.pem" 2>&1)"
