# syntax=docker/dockerfile:1
# One image for every partnerhub service; the command picks the service:
#   docker run partnerhub serve gateway|onboarding|lifecycle|metrics
# Other CLI commands run the same way (`docker compose exec gateway partnerhub client create ...`).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# .dockerignore admits only what the wheel needs (pyproject, README, events/, services/).
COPY . .
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import services.cli, events.store"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARTNERHUB_ENV=production \
    PARTNERHUB_HOST=0.0.0.0 \
    PARTNERHUB_VAR_DIR=/var/lib/partnerhub
RUN groupadd --system --gid 10001 partnerhub \
 && useradd --system --uid 10001 --gid partnerhub --home-dir /var/lib/partnerhub \
      --no-create-home --shell /usr/sbin/nologin partnerhub \
 && mkdir -p /var/lib/partnerhub \
 && chown partnerhub:partnerhub /var/lib/partnerhub
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/partnerhub/healthcheck.py
USER 10001:10001
WORKDIR /var/lib/partnerhub
EXPOSE 8000 8001 8002 8003
# Finds the service and port from PID 1's command line (see deploy/docker/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/partnerhub/healthcheck.py"]
ENTRYPOINT ["partnerhub"]
CMD ["serve", "gateway"]
