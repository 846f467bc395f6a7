# voxroute serve: the runtime that answers Twilio Media Streams calls.
# Build: docker build -t voxroute .   Run: docker run -p 8080:8080 --env-file .env voxroute
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOXROUTE_CONFIG=/app/examples/default.yaml \
    VOXROUTE_FIXTURES=/app/fixtures/audio

WORKDIR /app
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY telephony ./telephony
COPY routing ./routing
COPY emulators ./emulators
COPY examples ./examples
COPY fixtures ./fixtures
RUN pip install . \
    && useradd --system --uid 10001 voxroute
USER voxroute

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
# Keys and the public URL come from the environment / a mounted config:
#   SARVAM_API_KEY, OPENROUTER_API_KEY, TWILIO_AUTH_TOKEN, VOXROUTE_CONFIG=/config/voxroute.yaml
ENTRYPOINT ["voxroute", "serve", "--host", "0.0.0.0", "--port", "8080"]
