# Multi-stage build: plugins (wasm32-wasip2) and the host in a Rust image, then a slim runtime.
# Build: docker build -t switchyard .     Run: docker compose up
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them: every workspace member's manifest
# (scripts/check-dockerfile.py checks that none is missing) and an empty target for each.
COPY Cargo.toml Cargo.lock ./
COPY host/model/Cargo.toml host/model/Cargo.toml
COPY host/runtime/Cargo.toml host/runtime/Cargo.toml
COPY host/stores/Cargo.toml host/stores/Cargo.toml
COPY host/delivery/Cargo.toml host/delivery/Cargo.toml
COPY host/gateway/Cargo.toml host/gateway/Cargo.toml
COPY host/tools/Cargo.toml host/tools/Cargo.toml
COPY host/cli/Cargo.toml host/cli/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN for m in host/model host/runtime host/stores host/delivery host/gateway host/tools tests; do \
        mkdir -p "$m/src" && touch "$m/src/lib.rs"; \
    done \
    && mkdir -p host/cli/src && echo 'fn main() {}' > host/cli/src/main.rs \
    && cargo fetch --locked
COPY . .
RUN bash scripts/build-plugins.sh \
    && cargo build --release --locked -p switchyard \
    && mkdir -p /out/plugins && cp target/release/switchyard /out/ \
    && cp plugins/dist/*.wasm plugins/dist/switchyard.toml /out/plugins/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/switchyard --create-home switchyard
COPY --from=build /out/switchyard /usr/local/bin/switchyard
COPY --from=build --chown=switchyard /out/plugins /plugins
USER switchyard
ENV PORT=3000 PLUGINS_DIR=/plugins LOG_FORMAT=json
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/${PORT} && printf "GET /health HTTP/1.0\r\n\r\n" >&3 && head -1 <&3 | grep -q " 200 "'
ENTRYPOINT ["switchyard"]
CMD ["serve"]
