# One image for every cancelflow process: API, workers, beat, Flower and the one-shot migration.
# docker-compose.yml shows how they are started; the command decides what a container is.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CANCELFLOW_LOG_JSON=true \
    CANCELFLOW_DATA_DIR=/var/lib/cancelflow

WORKDIR /app
# Dependencies first, so a source change does not reinstall them.
COPY pyproject.toml README.md ./
COPY cancelflow/__init__.py cancelflow/__init__.py
RUN pip install .
COPY . .
# Editable: the Alembic scripts in migrations/ are found beside the package (they are not package data).
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/cancelflow --create-home cancelflow

USER cancelflow
EXPOSE 8000 5555 9100
# --no-proxy-headers: behind a reverse proxy, run it as docker-compose.yml does, with --forwarded-allow-ips.
CMD ["python", "-m", "uvicorn", "--factory", "cancelflow.api.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
