"""Plain Python (no Airflow) behind the fraud DAGs: settings, request-config builders, Clarify
configs, Athena SQL, Jinja snippets and the run's decisions."""
