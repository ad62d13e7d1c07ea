# One image for every grails-workers service: `wal-consumer ...` and `job-handlers ...`.
# Untested here (no Docker engine on the machine it was written on); see compose.yaml.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wal_consumer ./wal_consumer
COPY job_handlers ./job_handlers
COPY sql ./sql
# Editable on purpose: the migrations are read from sql/ next to the packages
# (wal_consumer/sqlfiles.py), which a regular wheel install would not ship.
RUN pip install -e . \
    && useradd --system --uid 10001 --no-create-home grails

USER grails
# /metrics, /healthz, /readyz of the consumer (WAL_METRICS_PORT) and the workers
# (JOB_METRICS_PORT) as compose.yaml sets them; the web service (JOB_WEB_PORT)
EXPOSE 9187 9188 8080
CMD ["wal-consumer", "--help"]
