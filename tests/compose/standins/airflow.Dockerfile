# Stand-in for apache/airflow:<version>-python3.11 where no registry can be reached: the conventions
# docker-compose.yaml and the project's Dockerfile rely on. /opt/airflow as AIRFLOW_HOME and working
# folder, user 50000 in group 0, /entrypoint that runs its arguments (an Airflow subcommand, or
# python / bash / airflow ...), pip installing into the user's environment on PATH, and what the
# official image carries beyond the project's requirements: Airflow itself, the Celery and
# PostgreSQL providers and drivers (airflow-extras.txt).
FROM fraud-standin/debian:bookworm
ARG AIRFLOW_VERSION
ENV AIRFLOW_HOME=/opt/airflow \
    PATH=/home/airflow/.local/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 50000 --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow \
    && mkdir -p /opt/airflow && chown 50000:0 /opt/airflow && chmod g+rwx /opt/airflow
COPY entrypoint /entrypoint
COPY airflow-extras.txt constraints.txt /tmp/standin/
USER 50000
RUN python3 -m venv /home/airflow/.local \
    && pip install --quiet "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/standin/airflow-extras.txt \
       -c /tmp/standin/constraints.txt
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/tini", "--", "/entrypoint"]
CMD []
