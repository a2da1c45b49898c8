# Keel: one binary (`keel server`, `keel worker`, `keel dev`, and the client).
# Built and run with the same `keel` binary the tests run.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keel

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin keel
COPY --from=build /src/target/release/keel /usr/local/bin/keel
USER keel
ENV KEEL_ADDR=0.0.0.0:7400 KEEL_LOG_FORMAT=json
EXPOSE 7400
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD curl -fsS http://127.0.0.1:7400/healthz || exit 1
ENTRYPOINT ["keel"]
CMD ["server"]
