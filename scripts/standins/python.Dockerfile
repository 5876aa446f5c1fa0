# Stand-in for python:3.11-slim, built by scripts/compose-test only where that image cannot be pulled:
# Debian bookworm's Python 3.11 on a base made from Debian's packages, with `python` on the PATH as there.
# BASE is that base; PIP_INDEX_URL and PIP_CERT are this machine's pip configuration (empty: pip's defaults),
# so the Dockerfile's `pip install` reaches the package index the way this machine does.
ARG BASE
FROM ${BASE}
ARG STANDS_IN_FOR
ARG PIP_INDEX_URL=""
LABEL org.statuscache.stand-in="${STANDS_IN_FOR}: Debian bookworm's Python 3.11, built from Debian's packages because the image could not be pulled"

ENV LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python
# pip-cert.pem is empty when this machine's pip trusts the default bundle.
COPY pip-cert.pem /etc/pip-cert.pem
RUN { echo '[global]'; \
      if [ -n "$PIP_INDEX_URL" ]; then echo "index-url = $PIP_INDEX_URL"; fi; \
      if [ -s /etc/pip-cert.pem ]; then echo 'cert = /etc/pip-cert.pem'; fi; } > /etc/pip.conf \
 && python --version
CMD ["python3"]
