# switchyard: multi-stage build; the runtime image holds the binary and the example
# configuration and runs as a non-root user.
# The latest stable toolchain: some dependencies need a newer rustc than rust-version.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY schemas schemas
COPY examples examples
RUN cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY examples/switchyard.toml /etc/switchyard/switchyard.toml
COPY schemas /usr/share/switchyard/schemas
# The Port agent's working directory: Helm and Docker mount the user's mapping at
# /app/control_the_payload_config.json, which Port mode reads from there.
WORKDIR /app
USER 10001
ENV SWITCHYARD_CONFIG=/etc/switchyard/switchyard.toml \
    SWITCHYARD_HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["switchyard"]
CMD ["run"]
