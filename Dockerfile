# The Airflow image of the dev stack (docker-compose.yaml): the official Airflow image with the
# project's pinned requirements. dags/, plugins/, include/ and data/ are mounted, not copied, so edits
# show up without a rebuild. No login is baked in: airflow-init writes it from .env.
# AIRFLOW_BASE_IMAGE: another image with the official one's layout (make test-compose builds a
# stand-in where no registry can be reached).
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

COPY requirements.txt constraints.txt /opt/airflow/
# requirements.txt pins apache-airflow to the image's version, so pip keeps the image's Airflow.
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt -c /opt/airflow/constraints.txt

# Mount points of the named volumes, owned by the airflow user (and its group 0) so that Docker
# creates the volumes writable for the stack's services.
RUN mkdir -p /opt/airflow/config /opt/airflow/localcloud \
    && chmod g+rwx /opt/airflow/config /opt/airflow/localcloud

ENV PYTHONPATH=/opt/airflow
