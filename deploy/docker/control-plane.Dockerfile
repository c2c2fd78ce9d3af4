# toolplane control plane: build in the Rust image, run in a slim one as non-root.
# Build from the repository root: docker build -f deploy/docker/control-plane.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p toolplane-control-plane --bin toolplane-control-plane

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 toolplane
COPY --from=build /src/target/release/toolplane-control-plane /usr/local/bin/toolplane-control-plane
USER 10001
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/toolplane-control-plane"]
