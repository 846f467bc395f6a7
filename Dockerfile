# voxroute serve: the runtime that answers carrier calls (Twilio by default; see telephony.carriers).
# Build: docker build -t voxroute .
# Run:   docker run -p 8080:8080 --env-file .env -v voxroute-data:/data voxroute
# It refuses to start (exit 2, naming every missing variable) without the secrets it needs:
#   TWILIO_AUTH_TOKEN (and each enabled carrier's), VOXROUTE_API_KEY, SARVAM_API_KEY, OPENROUTER_API_KEY;
#   a config of your own: -v ./my.yaml:/config/voxroute.yaml -e VOXROUTE_CONFIG=/config/voxroute.yaml
# `docker stop` sends SIGTERM: new calls are refused, calls in progress get shutdown.drain_s (20 s by
# default) to finish, then hear the closing phrase; the call log is flushed (or spooled to /data) and
# the process exits 0. Give it the time: docker stop -t 40 (the default 10 s cuts the drain short).
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOXROUTE_CONFIG=/app/examples/default.yaml \
    VOXROUTE_FIXTURES=/app/fixtures/audio \
    VOXROUTE_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY voxroute ./voxroute
COPY agent ./agent
COPY telephony ./telephony
COPY routing ./routing
COPY emulators ./emulators
COPY examples ./examples
COPY fixtures ./fixtures
# tini as PID 1: forwards SIGTERM/SIGINT to voxroute and reaps any child process.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && pip install '.[uvloop]' \
    && useradd --system --uid 10001 --home-dir /data voxroute \
    && mkdir -p /data \
    && chown voxroute:voxroute /data
# The call log (SQLite, unless VOXROUTE_DATABASE_URL names PostgreSQL) and its spool live here.
VOLUME ["/data"]
USER 10001:10001

# 8080: webhooks, the operator API, probes, metrics (and the streams too); 8090: the carrier media
# streams on voxroute's lean websocket server (--media-port; the proxy routes the stream paths there)
EXPOSE 8080 8090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["/usr/bin/tini", "--", "voxroute", "serve", "--host", "0.0.0.0", "--port", "8080", "--media-port", "8090"]
