# Caducée's image: one image, every node; what a node runs is its command (`serve --role ...`).
# The Python packages come from PyPI (as `make run` installs them); PostgreSQL's client tools
# are for `caducee backup` / `restore` (pg_dump, pg_restore), gnupg for the CNAM's files.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client gnupg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/caducee caducee

WORKDIR /opt/caducee
COPY pyproject.toml README.md ./
COPY caducee ./caducee
RUN pip install --no-cache-dir .

USER caducee
# Listen on every interface of the container (the defaults are the loopback address, for a workstation).
ENV CADUCEE_DATA_DIR=/var/lib/caducee \
    CADUCEE_HTTP_HOST=0.0.0.0 \
    CADUCEE_SMTP_HOST=0.0.0.0
VOLUME ["/var/lib/caducee"]
EXPOSE 8080 2525 5587 5465 1143 1993
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["caducee"]
CMD ["serve"]
