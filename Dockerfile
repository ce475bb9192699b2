# The autoscaler image for the compose lab (needs a registry to pull the base images).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p autoscaler && strip target/release/autoscaler

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/autoscaler /usr/local/bin/autoscaler
COPY config.yaml /etc/k3s-autoscaler/config.yaml
ENV AUTOSCALER_CONFIG=/etc/k3s-autoscaler/config.yaml
ENTRYPOINT ["/usr/local/bin/autoscaler"]
CMD ["run"]
