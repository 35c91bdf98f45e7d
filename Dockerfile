# syntax=docker/dockerfile:1
# msgbusd in a container: the daemon (msgbus-server with the SQLite store) plus the `msgbus`
# command (msgbus-sdk) for the HEALTHCHECK, installed with uv from uv.lock.
#
#   docker build -t msgbus .
#   docker run -d --name msgbus -p 127.0.0.1:50051:50051 -v msgbus-data:/var/lib/msgbus msgbus
#   docker exec msgbus msgbus health
#
# The daemon also serves a Unix socket, /run/msgbus/msgbusd.sock (mode 0660, group msgbus, gid
# 10001). Share it with other containers through a volume, and give their processes the group:
#   docker run ... -v msgbus-run:/run/msgbus msgbus
#   docker run --group-add 10001 -v msgbus-run:/run/msgbus app-image   # unix:///run/msgbus/msgbusd.sock

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment at /opt/msgbus, exactly as locked ----------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/msgbus
WORKDIR /src

# Third-party dependencies first (a layer that survives source edits): the workspace manifests
# and the lock file are all uv needs for that.
COPY pyproject.toml uv.lock ./
COPY packages/msgbus-core/pyproject.toml packages/msgbus-core/
COPY packages/msgbus-proto/pyproject.toml packages/msgbus-proto/
COPY packages/msgbus-store-sqlite/pyproject.toml packages/msgbus-store-sqlite/
COPY packages/msgbus-store-duckdb/pyproject.toml packages/msgbus-store-duckdb/
COPY packages/msgbus-server/pyproject.toml packages/msgbus-server/
COPY packages/msgbus-sdk/pyproject.toml packages/msgbus-sdk/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace \
        --package msgbus-server --package msgbus-sdk

# Then the msgbus packages themselves, built as wheels and installed non-editable, so the
# runtime image needs nothing from /src. Add `--package msgbus-store-duckdb` for DuckDB.
COPY packages/ packages/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
        --package msgbus-server --package msgbus-sdk

# --- runtime: the same Python image, the environment, and an unprivileged user ---------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 msgbus \
 && useradd --system --uid 10001 --gid msgbus --home-dir /var/lib/msgbus --create-home \
        --shell /usr/sbin/nologin msgbus \
 && chmod 0700 /var/lib/msgbus \
 && install -d -o msgbus -g msgbus -m 0755 /run/msgbus
COPY --from=build /opt/msgbus /opt/msgbus
ENV PATH=/opt/msgbus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MSGBUS_ENDPOINT=127.0.0.1:50051

USER msgbus
WORKDIR /var/lib/msgbus
VOLUME ["/var/lib/msgbus"]
EXPOSE 50051

# `msgbus health` exits 0 only when the daemon answers SERVING; Docker wants 1 for unhealthy.
# With TLS (below), override it: --health-cmd 'msgbus --tls --tls-ca /tls/ca.pem health || exit 1'
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/bin/sh", "-c", "msgbus --endpoint 127.0.0.1:50051 --timeout 5 health || exit 1"]

ENTRYPOINT ["/opt/msgbus/bin/msgbusd"]
# !!! PLAINTEXT gRPC ON ALL INTERFACES, AND NO AUTHORIZATION !!!
# msgbusd refuses plaintext on a non-loopback address unless --allow-insecure is given, and a
# non-loopback address without an authorization policy unless --allow-anyone is given. A
# container must listen on 0.0.0.0 to be reachable through a published port, so the default
# command passes both: publish the port on loopback only (-p 127.0.0.1:50051:50051) or on a
# private network. For anything else, mount certificates and a policy (README: Authorization)
# and replace the command:
#   docker run ... -v ./tls:/tls:ro -v ./msgbusd.toml:/etc/msgbus/msgbusd.toml:ro msgbus \
#       --listen 0.0.0.0:50051 --listen unix:///run/msgbus/msgbusd.sock \
#       --data /var/lib/msgbus/msgbus.sqlite --storage sqlite \
#       --tls-cert /tls/server.pem --tls-key /tls/server.key --config /etc/msgbus/msgbusd.toml
CMD ["--listen", "0.0.0.0:50051", "--listen", "unix:///run/msgbus/msgbusd.sock", \
     "--data", "/var/lib/msgbus/msgbus.sqlite", "--storage", "sqlite", \
     "--allow-insecure", "--allow-anyone"]
