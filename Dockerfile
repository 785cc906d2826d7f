# scoregate container image.
#
#   docker build -t scoregate .
#
#   docker run -d --name scoregate \
#     -p 8443:8443 \
#     -v "$PWD/deploy/etc:/etc/scoregate:ro" \
#     -v scoregate-state:/var/lib/scoregate \
#     scoregate
#
# /etc/scoregate holds scoregate.toml and the certificate files it names (mount it read-only);
# /var/lib/scoregate holds the state (key store, token signing keys, service ids) and must
# survive restarts, or every client's key changes. A config for the container:
#
#   [listen]
#   address = "0.0.0.0:8443"
#   [[tls.certificates]]
#   cname = "scoring.example.com"
#   cert  = "fullchain.pem"                         # relative to the config: /etc/scoregate/
#   key   = "key.pem"
#   [admin]
#   address    = "127.0.0.1:9090"                   # see the note on the admin API below
#   token_file = "/var/lib/scoregate/admin-token"   # writable: generated (0600) when missing
#   [state]
#   dir = "/var/lib/scoregate"
#
# The files in /etc/scoregate must be readable by uid 10001 (the key may stay 0600 if that user
# owns it: `chown 10001 key.pem`). Validate before starting:
#
#   docker run --rm -v "$PWD/deploy/etc:/etc/scoregate:ro" scoregate check --config /etc/scoregate/scoregate.toml
#
# Admin commands run inside the container, where the admin API's loopback address is reachable:
#
#   docker exec scoregate scoregate keys list iris --config /etc/scoregate/scoregate.toml
#
# The admin API binds loopback (127.0.0.1:9090) by default, so it is not reachable through a
# published port. Set `[admin] address = "0.0.0.0:9090"` (and publish or expose 9090) only on a
# private network: /metrics, /healthz and /readyz need no token, and anyone holding the admin
# token can read and replace service keys. Port 9090 is EXPOSEd for that case only.
#
# docker stop sends SIGTERM: scoregate stops accepting, lets in-flight requests finish (at most
# [server] drain_timeout, 25 s by default, under docker's default 10 s grace unless you pass
# `docker stop -t 30`), then exits 0. `docker kill -s HUP scoregate` reloads config and
# certificates.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against placeholder sources, so that a change to the code does not rebuild
# them. Cargo.toml names two benches and the test-harness workspace member, which must exist for
# the manifest to load.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src benches testkit/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs testkit/src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && echo 'fn main() {}' > benches/handshake.rs \
    && cargo build --release --locked -p scoregate \
    && rm -rf src benches testkit/src

# The real sources. COPY keeps the files' own times, which may be older than the placeholder
# build: touch the crate roots so cargo rebuilds the crate itself.
COPY . .
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p scoregate \
    && cp target/release/scoregate /usr/local/bin/scoregate

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: trusted roots for fetching JWKS from https:// URLs (token auth).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 scoregate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/scoregate --shell /usr/sbin/nologin scoregate \
    && mkdir -p /etc/scoregate /var/lib/scoregate \
    && chown scoregate:scoregate /var/lib/scoregate \
    && chmod 0700 /var/lib/scoregate

COPY --from=build /usr/local/bin/scoregate /usr/local/bin/scoregate

VOLUME ["/etc/scoregate", "/var/lib/scoregate"]
WORKDIR /var/lib/scoregate
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8443 9090

ENTRYPOINT ["scoregate"]
CMD ["serve", "--config", "/etc/scoregate/scoregate.toml"]
