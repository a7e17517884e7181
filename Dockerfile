# A slim, non-root image of the worker. Offline engines ship inside the wheels.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RYMI_HOST=0.0.0.0 RYMI_PORT=8080 RYMI_DATA_DIR=/var/lib/rymi

RUN useradd --create-home --uid 10001 rymi \
 && mkdir -p /var/lib/rymi && chown rymi:rymi /var/lib/rymi

WORKDIR /app
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY pipelines ./pipelines
COPY providers ./providers
RUN pip install --no-cache-dir .

USER rymi
EXPOSE 8080
VOLUME ["/var/lib/rymi"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RYMI_PORT','8080'), timeout=2)"

# `start` reports to RYMI_API_URL with RYMI_API_KEY; use `dev` for the embedded default.
CMD ["rymi-worker", "start"]
