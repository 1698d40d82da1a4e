# rbm-fallback: `docker build -t rbm-fallback .`
#
# Build stage. sqlx checks the queries at compile time; SQLX_OFFLINE makes it
# use the query data committed in .sqlx/ instead of a live database.
FROM rust:1-bookworm AS builder
ENV SQLX_OFFLINE=true
WORKDIR /build

# Dependencies first, in a layer of their own that survives source changes:
# build them against placeholder sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The crate itself. migrations/ and config/default.toml are compiled into the
# binary; .sqlx/ holds the offline query data.
COPY .sqlx ./.sqlx
COPY config ./config
COPY migrations ./migrations
COPY src ./src
# COPY keeps the files' own timestamps, which may be older than the
# placeholder build: touch the crate roots so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -m 0755 target/release/rbm-fallback /usr/local/bin/rbm-fallback

# Runtime stage: the binary, CA certificates for TLS to Google and Twilio, and
# an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rbmf \
 && useradd --system --uid 10001 --gid rbmf --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin rbmf
COPY --from=builder /usr/local/bin/rbm-fallback /usr/local/bin/rbm-fallback
USER 10001:10001
EXPOSE 8080

# Ready = the database answers and every migration is applied (GET /readyz).
# The image has no curl or wget: bash's /dev/tcp speaks the one HTTP request.
# It assumes the default listen port 8080 (RBMF_LISTEN). Orchestrators that
# ignore HEALTHCHECK should probe /readyz for readiness and /healthz for liveness.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["rbm-fallback"]
CMD ["serve"]
