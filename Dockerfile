# syntax=docker/dockerfile:1
# One image with the five Kappa services and the CLI. Build: docker build -t kappa:0.1.0 .
# The Helm chart runs /usr/local/bin/kappa-{registry,predictor,trainer,bridge,console} from it.

# --- build: the pinned toolchain, librdkafka compiled from source (rdkafka's cmake build) -----
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kappa-registry --bin kappa-predictor --bin kappa-trainer --bin kappa-bridge --bin kappa-console --bin kappa \
 && mkdir -p /out \
 && cp target/release/kappa-registry target/release/kappa-predictor target/release/kappa-trainer target/release/kappa-bridge target/release/kappa-console target/release/kappa /out/

# --- run: a small Debian with only the shared libraries the binaries link (OpenSSL, zlib) -----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 kappa \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin kappa
COPY --from=build /out/kappa-registry /out/kappa-predictor /out/kappa-trainer /out/kappa-bridge /out/kappa-console /out/kappa /usr/local/bin/
USER 10001:10001
# gRPC: registry 50051, predictor 50052, trainer 50053, bridge 50054, console 50055; Prometheus
# /metrics: 9101-9105; the console's pages: 8080.
EXPOSE 50051 50052 50053 50054 50055 9101 9102 9103 9104 9105 8080
# No default command: the chart (or you) picks the service, e.g. `kappa-registry --help`.
CMD ["kappa", "--help"]
