# toolplane executor sidecar: build in the Rust image, run in a slim one as non-root.
# Build from the repository root: docker build -f deploy/docker/sidecar.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p toolplane-sidecar --bin toolplane-sidecar

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 toolplane && mkdir -p /var/lib/toolplane/spool && chown 10001 /var/lib/toolplane/spool
COPY --from=build /src/target/release/toolplane-sidecar /usr/local/bin/toolplane-sidecar
USER 10001
EXPOSE 50061 50062 9091
ENTRYPOINT ["/usr/local/bin/toolplane-sidecar"]
