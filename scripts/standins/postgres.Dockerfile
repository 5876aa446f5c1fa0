# Stand-in for postgres:<version>, built by scripts/compose-test only where that image cannot be pulled:
# Debian bookworm's PostgreSQL (PG_MAJOR), with the official image's contract the compose file relies on:
# POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB on first start, data in PGDATA, pg_isready on the PATH.
# It says it is a stand-in, and which PostgreSQL it runs, in its label and first log line.
ARG BASE
FROM ${BASE}
ARG STANDS_IN_FOR
ARG PG_MAJOR=15
LABEL org.statuscache.stand-in="${STANDS_IN_FOR}: PostgreSQL ${PG_MAJOR} from Debian bookworm's packages, because the image could not be pulled"

# As the official image does: no cluster from the package; the entrypoint makes one in PGDATA.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    STANDS_IN_FOR=${STANDS_IN_FOR}
# Owned by postgres in the image, so a fresh named volume mounted here starts owned by postgres too.
RUN install -d -o postgres -g postgres -m 700 "$PGDATA" \
 && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# Fast shutdown, as the official image.
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
