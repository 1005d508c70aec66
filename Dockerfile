# flagpost's image: Debian's python3 on debian:bookworm-slim, flagpost in a virtual environment.
#
#   docker build -t flagpost .
#   docker run --rm -p 8080:8080 --read-only -v flagpost-data:/var/lib/flagpost flagpost
#
# The build stage has pip and the package tools; the final stage has only python3 and the
# environment built for it. Everything flagpost writes (the last good rules, the event spool,
# the event files) is under one volume, /var/lib/flagpost, so the root filesystem may be
# read-only. It runs as uid 10001, never root.

FROM debian:bookworm-slim AS build
# Unpinned on purpose: bookworm's security updates replace these versions, and a pin would
# make the build fail on the day one lands.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
# pip trusts the system's certificate bundle (a proxy's CA added to it is then trusted too).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/flagpost
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY rules ./rules
COPY service ./service
RUN /opt/flagpost/bin/pip install . \
    && /opt/flagpost/bin/pip uninstall -y pip setuptools \
    && find /opt/flagpost -name __pycache__ -prune -exec rm -rf {} + \
    && /opt/flagpost/bin/python -m compileall -q /opt/flagpost

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
    && groupadd --gid 10001 flagpost \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/flagpost \
        --shell /usr/sbin/nologin flagpost \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/flagpost
COPY --from=build /opt/flagpost /opt/flagpost
ENV PATH=/opt/flagpost/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLAGPOST_HOST=0.0.0.0 \
    FLAGPOST_PORT=8080 \
    FLAGPOST_CACHE_DIR=/var/lib/flagpost/cache \
    FLAGPOST_SPOOL_DIR=/var/lib/flagpost/spool \
    FLAGPOST_EVENTS=file:/var/lib/flagpost/events
USER 10001:10001
WORKDIR /var/lib/flagpost
VOLUME ["/var/lib/flagpost"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('FLAGPOST_PORT', '8080')}/healthz\", timeout=2)"]
# Exec form: flagpost is the process SIGTERM reaches, and it drains its events before exit.
ENTRYPOINT ["flagpost"]
CMD ["serve"]
