# Default image for a Rust service: packs a release binary that cargo already built (the
# pipeline's build job makes the binaries, the image job packs them; no compiler in the image).
#
#   mkdir -p .build/bin && cp "$CARGO_TARGET_DIR/release/backend" .build/bin/
#   docker build --build-arg SERVICE=backend --build-arg VERSION=<tag> -t <image> .
#
# The binary must answer `<binary> healthcheck` with exit 0/1 and read /app/config.toml.
# A service with its own services/<svc>/Dockerfile uses that one instead.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG SERVICE
ARG VERSION=unknown

RUN test -n "${SERVICE}" || { echo "build with --build-arg SERVICE=<binary name>" >&2; exit 1; } \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

COPY .build/bin/${SERVICE} /app/${SERVICE}
# A fixed path for the exec-form CMD/HEALTHCHECK below (they do not expand build args).
RUN ln -s "/app/${SERVICE}" /app/service && /app/service --help >/dev/null

LABEL org.opencontainers.image.title="${SERVICE}" \
      org.opencontainers.image.version="${VERSION}"
ENV APP_VERSION="${VERSION}"

USER app:app
WORKDIR /app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/app/service", "healthcheck"]
CMD ["/app/service"]
