# Stand-in for motoserver/moto:<version>, built by scripts/compose-test only where that image cannot be pulled:
# the same moto release's server from PyPI, on the Python stand-in (BASE), started as the real image starts it.
ARG BASE
FROM ${BASE}
ARG STANDS_IN_FOR
ARG MOTO_VERSION
LABEL org.statuscache.stand-in="${STANDS_IN_FOR}: moto[server]==${MOTO_VERSION} from PyPI, because the image could not be pulled"
RUN python -m venv /opt/moto \
 && /opt/moto/bin/pip install --no-cache-dir "moto[server]==${MOTO_VERSION}"
ENV PATH=/opt/moto/bin:$PATH
EXPOSE 5000
ENTRYPOINT ["moto_server", "-H", "0.0.0.0"]
