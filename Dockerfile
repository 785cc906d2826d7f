# scoregate container image.
#
#   docker build -t scoregate .
#
#   OUT=deploy/docker/certs ./certs-example/make-certs.sh scoring.example.com
#   sudo chown 10001:10001 deploy/docker/certs/key.pem
#   docker run -d --name scoregate \
#     -p 8443:8443 \
#     -v "$PWD/deploy/docker:/etc/scoregate:ro" \
#     -v scoregate-state:/var/lib/scoregate \
#     scoregate
#
# deploy/docker/ has the config for this image (scoregate.toml) and compose.yml, which runs the
# gateway beside the Azure ML inference server (README, "Docker").
#
# /etc/scoregate holds scoregate.toml and the certificate files it names (mount it read-only);
# SCOREGATE_CONFIG points at the file, so `serve`, `check` and the admin commands find it
# without --config. /var/lib/scoregate holds the state (key store, token signing keys, service
# ids) and the admin token, and must survive restarts, or every client's key changes: point
# `[state] dir` and `[admin] token_file` there.
#
# The files in /etc/scoregate must be readable by uid 10001: the key may stay 0600 if that user
# owns it (`sudo chown 10001:10001 key.pem`). Validate before starting:
#
#   docker run --rm -v "$PWD/deploy/docker:/etc/scoregate:ro" scoregate check
#
# Admin commands run inside the container, where the admin API's loopback address is reachable:
#
#   docker exec scoregate scoregate keys list iris
#
# The admin API binds loopback (127.0.0.1:9090) by default, so it is not reachable through a
# published port. Set `[admin] address = "0.0.0.0:9090"` (and publish or expose 9090) only on a
# private network: /metrics, /healthz and /readyz need no token, and anyone holding the admin
# token can read and replace service keys. Port 9090 is EXPOSEd for that case only.
#
# HEALTHCHECK runs `scoregate healthcheck --ready` in the container: the admin API's /readyz
# (200 once config, certificates and state are loaded; 503 while draining).
#
# docker stop sends SIGTERM: scoregate stops accepting, lets in-flight requests finish (at most
# [server] drain_timeout, 25 s by default, more than docker's default 10 s grace: use
# `docker stop -t 30`), then exits 0. `docker kill -s HUP scoregate` (or
# `docker exec scoregate scoregate reload`) reloads config and certificates.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against placeholder sources, so that a change to the code does not rebuild
# them. Cargo.toml names three benches and the test-harness workspace member, which must exist for
# the manifest to load.
COPY Cargo.toml Cargo.lock ./
# jemalloc's built-in options (README, "Memory and the allocator") are part of its build.
COPY .cargo .cargo
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src benches testkit/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs testkit/src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && echo 'fn main() {}' > benches/handshake.rs \
    && echo 'fn main() {}' > benches/compare.rs \
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
# Every command that takes --config (serve, check, keys, reload, healthcheck, ...) reads this.
ENV SCOREGATE_CONFIG=/etc/scoregate/scoregate.toml
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8443 9090

HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["scoregate", "healthcheck", "--ready"]

ENTRYPOINT ["scoregate"]
CMD ["serve"]
