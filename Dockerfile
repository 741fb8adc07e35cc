# tally's one binary in a small runtime image. Build: docker build -t tally .
# (docker-compose.yml builds it for the ingest, worker and aggregator services.)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# librdkafka is compiled from source by rdkafka-sys (make, gcc, zlib headers).
# Plain RUN (no cache mounts), so the classic builder and BuildKit both build it.
RUN cargo build --release --locked -p tally \
    && install -D target/release/tally /out/tally

FROM debian:bookworm-slim
# zlib for librdkafka's compression; nothing else is linked dynamically but libc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home tally
COPY --from=build /out/tally /usr/local/bin/tally
USER tally
WORKDIR /data
ENTRYPOINT ["tally"]
CMD ["--help"]
