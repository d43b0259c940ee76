# The real-time event service as a container image.
#
#   docker build -t swe-api .
#   docker run -p 8000:8000 -e REDIS_URL=redis://redis:6379 -e CORS_ORIGINS=https://app.example.com \
#     -e JWT_SECRET_KEY=$JWT_SECRET_KEY swe-api
#
# It runs with ENVIRONMENT=production unless told otherwise (-e ENVIRONMENT=development): it refuses
# to start, saying which setting and why, with the default or a short JWT_SECRET_KEY
# (openssl rand -hex 32 makes one) or CORS_ORIGINS=*.
# Every setting is an environment variable (apps/api/config.py, README.md "Configuration"), or a
# file named after it in /run/secrets (Docker and Compose secrets: /run/secrets/jwt_secret_key).
# Without DATABASE_URL, projects are in a SQLite file in /app/data (mount a volume there to keep
# them: -v events-data:/app/data); with several containers, set DATABASE_URL to a PostgreSQL.
# docker-compose.yml, websocket-deployment.yaml and deploy/README.md show how to run it with Redis.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Runtime dependencies only (requirements-dev.txt is for tests and lint), in a layer of their own
# so that a code change does not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# A non-root user with a numeric id, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app \
    && mkdir -p /app/logs /app/data \
    && chown 10001:10001 /app/logs /app/data

COPY apps/ ./apps/

# Production by default; containers log to stderr only (LOG_FILE="" turns the log file off);
# listen on every interface.
ENV ENVIRONMENT=production \
    LOG_FILE="" \
    HOST=0.0.0.0 \
    PORT=8000

USER 10001:10001
EXPOSE 8000

# Liveness: /health answers 200 as long as the process serves (python: the slim image has no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

# uvicorn handles SIGTERM (docker stop) gracefully, waiting up to SHUTDOWN_TIMEOUT_SECONDS.
CMD ["python", "apps/api/main.py"]
