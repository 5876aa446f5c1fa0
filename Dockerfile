# statuscache: `docker build -t statuscache .` builds the production image (the last stage); `--target demo` adds
# the [demo] extra (moto, boto3) for the compose seeder. `docker compose up` runs the whole stack (docker-compose.yml).
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: compilers and pip live here only ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# For any dependency without a wheel for this platform (asyncpg, orjson, cryptography... usually have one).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

# Same path as in the final stage: a venv's scripts carry its absolute path in their shebangs.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
# A regular (non-editable) install: the package lands in the venv's site-packages, without the dev extra.
# The migrations ship inside it as service.migrations (pyproject.toml), so the schema travels with the code.
# The check runs with -P: from /src, `python -c` would import ./service (which has no migrations) instead.
RUN pip install . \
 && python -P -c 'import service.store.db as db; assert (db.MIGRATIONS_DIR / "env.py").is_file(), db.MIGRATIONS_DIR'

# --- demo-builder: the same venv plus the [demo] extra; only the demo target copies it ----------------------
FROM builder AS demo-builder
RUN pip install '.[demo]'

# --- production: the venv (migrations inside), alembic.ini; no compilers, no moto ---------------------------
FROM ${PYTHON_IMAGE} AS production

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 statuscache \
 && useradd --system --uid 10001 --gid statuscache --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin statuscache \
 && install -d -o statuscache -g statuscache /app

COPY --from=builder /opt/venv /opt/venv

# /app is the working directory: owned by the service user so the embedded SQLite default
# (./statuscache.db) works; alembic.ini plus a migrations link let `alembic` run by hand here.
WORKDIR /app
COPY alembic.ini ./
RUN ln -s "$(python -c 'import service.store.db as db; print(db.MIGRATIONS_DIR)')" /app/migrations \
 && python -c 'import service.store.db as db; assert db.head_revision(), "no Alembic head found"'

USER 10001:10001

EXPOSE 8080
# The port follows STATUSCACHE_PORT when that is how the port was set; `poll` serves no HTTP (compose
# disables the check there).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STATUSCACHE_PORT', '8080') + '/healthz', timeout=4)"]

# The default command listens beyond loopback, so the image says how callers authenticate: with tokens, from
# a file mounted as a secret here (`statuscache token create NAME` prints a token and its line). Without the
# file `serve` refuses to start; a deployment that means to be anonymous sets STATUSCACHE_API_TOKENS_FILE=""
# and STATUSCACHE_ALLOW_ANONYMOUS=1 (as the local docker-compose stack does).
ENV STATUSCACHE_API_TOKENS_FILE=/run/secrets/statuscache-api-tokens

ENTRYPOINT ["statuscache"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

# --- demo: the production image plus the [demo] extra, for compose's seed service (`target: demo`) ---------
FROM production AS demo
COPY --from=demo-builder /opt/venv /opt/venv

# --- the default: `docker build` without --target builds the last stage, and that must be production ------
FROM production
