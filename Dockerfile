# users-service container image.
#
#   docker build -t users-service .
#   docker run -p 8080:8080 -v users-data:/data -e USERS_API_KEY=<a long random key> users-service
#
# The image listens on 0.0.0.0, so it refuses to start without an admin key
# (USERS_API_KEY, or USERS_API_KEY_FILE pointing at a mounted secret); see the README's
# Security section.
#
# The versions pinned in Cargo.lock need Rust 1.89 or newer. To pin the compiler:
#   docker build --build-arg RUST_VERSION=1.89 -t users-service .
ARG RUST_VERSION=1

# ---- build ------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependencies first, against placeholder sources, so that a change to the code does
# not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The service itself. Migrations are embedded by sqlx::migrate!, openapi.yaml and the
# common-password list by include_str!, so all must be present at build time.
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY data ./data
COPY openapi.yaml ./
# Make the real sources newer than the placeholder build so cargo rebuilds the crate.
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked

# ---- runtime ----------------------------------------------------------------
# SQLite is compiled into the binary; it needs the C library and OpenSSL (passkeys).
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 users-service \
 && useradd --system --uid 10001 --gid users-service \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin users-service \
 && mkdir /data \
 && chown users-service:users-service /data

COPY --from=builder /build/target/release/users-service /usr/local/bin/users-service

ENV USERS_LISTEN=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///data/users.db

# The SQLite database (with its -wal and -shm files) lives here.
VOLUME /data
WORKDIR /data
EXPOSE 8080
USER 10001:10001

# No HEALTHCHECK: the slim image has no HTTP client. Probe GET /health from the
# orchestrator instead; it answers 200 {"status":"ok"} when the database answers.
# `docker stop` sends SIGTERM, on which the service finishes requests in flight and exits.
ENTRYPOINT ["/usr/local/bin/users-service"]
