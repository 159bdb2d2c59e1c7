#!/bin/bash
# Runs its arguments (an Airflow service of docker-compose.yaml) with the settings airflow-init wrote
# from infra/template.yaml's outputs (python -m include.stack.infra): FRAUD_BUCKET,
# FRAUD_EXECUTION_ROLE_ARN, ... and AIRFLOW_CONN_AWS_DEFAULT, which assumes the template's Airflow role.
# A variable .env (or the shell) already sets, such as a real account's connection, is kept.
# INFRA_SETTINGS_FILE: the file (one NAME=value a line, a value may be in single quotes).
set -euo pipefail
while IFS='=' read -r name value; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  value=${value#\'}
  value=${value%\'}
  [[ -n "${!name:-}" ]] || export "$name=$value"
done < "${INFRA_SETTINGS_FILE:?names the settings file airflow-init writes}"
exec "$@"
