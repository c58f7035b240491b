# privault in a container: built in a full Rust image, run from a distroless one (no shell, no
# package manager, non-root). Build: docker build -t privault .
# Run (development mode on the container's loopback is useless; give it TLS and a real root key):
#   docker run -v privault-data:/var/lib/privault -v /etc/privault:/etc/privault:ro -p 50051:50051 \
#     privault serve --config /etc/privault/privault.toml
# The data volume must be writable by uid 65532 and mode 0700 (the image creates it so).

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --locked --release \
 && install -D -m 0755 target/release/privault /out/usr/local/bin/privault \
 && mkdir -p /out/etc/privault /out/var/lib/privault \
 && cp -r policies /out/etc/privault/policies \
 && chmod 0700 /out/var/lib/privault \
 && chown 65532:65532 /out/var/lib/privault

# The C++ runtime RocksDB needs (libstdc++, libgcc), glibc, CA certificates; nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
USER 65532:65532
ENV PRIVAULT_DATA_DIR=/var/lib/privault \
    PRIVAULT_POLICIES=/etc/privault/policies \
    PRIVAULT_LOG_FORMAT=json
VOLUME ["/var/lib/privault"]
EXPOSE 50051 9100
# SIGTERM drains (health NOT_SERVING first, then in-flight calls, within --shutdown-grace-secs).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/privault"]
CMD ["serve", "--config", "/etc/privault/privault.toml"]
