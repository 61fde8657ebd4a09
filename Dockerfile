# syntax=docker/dockerfile:1
# seqguard worker image. Build: docker build -t seqguard .
# Default command runs a worker; the DLQ agent is the same image with `seqguard dlq agent`.

# --- build: install the project and its dependencies into a venv -------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is needed;
# pip fetches the build backend pyproject.toml names (setuptools>=68) by itself.
COPY pyproject.toml README.md ./
COPY workers ./workers
COPY tables ./tables
RUN pip install .

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEQGUARD_DATA_DIR=/var/lib/seqguard \
    SEQGUARD_WEB_HOST=0.0.0.0 \
    SEQGUARD_WEB_PORT=6066

RUN groupadd --system --gid 10001 seqguard \
 && useradd --system --uid 10001 --gid seqguard --home-dir /var/lib/seqguard \
      --no-create-home --shell /usr/sbin/nologin seqguard \
 && install -d -o seqguard -g seqguard -m 0750 /var/lib/seqguard

COPY --from=build /opt/venv /opt/venv
# The reference domains' policy file, at a stable path (docker-compose.yml points at it).
COPY workers/domains/policies.toml /etc/seqguard/policies.toml

USER 10001:10001
WORKDIR /var/lib/seqguard

# Faust web server: /metrics (Prometheus) and /healthz.
EXPOSE 6066

# Faust stops cleanly on SIGTERM (commits offsets, flushes changelogs); give it the
# time to do so (docker stop -t / compose stop_grace_period).
STOPSIGNAL SIGTERM

CMD ["seqguard", "worker"]
