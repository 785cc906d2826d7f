# gateway-files.sh - sourced by the bench scripts that start the gateway themselves (soak.sh,
# profile-keepalive.sh, instructions-ab.sh): the files every such gateway needs, in the current
# directory, and the part of its config they all share.

# gateway_files: a self-signed ECDSA P-256 certificate for "localhost" in certs/, and an admin
# token in admin-token.
gateway_files() {
    mkdir -p certs
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout certs/key.pem \
        -out certs/fullchain.pem -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" 2>/dev/null
    openssl rand -hex 24 > admin-token
}

# gateway_toml LISTEN_PORT ADMIN_PORT STATE_DIR WORKERS ACCESS_LOG [STATE_LINES]: prints the config
# up to the services (listener and admin API on 127.0.0.1, the files above, STATE_LINES added to
# [state]); the caller appends its [[service]] tables.
gateway_toml() {
    cat <<TOML
[listen]
address = "127.0.0.1:$1"
[[tls.certificates]]
cname = "localhost"
cert = "certs/fullchain.pem"
key = "certs/key.pem"
[admin]
address = "127.0.0.1:$2"
token_file = "admin-token"
[state]
dir = "$3"
${6:-}
[runtime]
worker_threads = $4
[log]
access = $5
TOML
}
