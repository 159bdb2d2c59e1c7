"""Custom Airflow operators of the fraud pipeline, for what the Amazon provider has no operator:
Feature Store, SageMaker lineage, endpoint smoke tests, model registry look-ups, folder uploads.
Each is a thin operator over an AWS hook, like the provider's own; the Airflow AWS connection
alone decides which cloud answers."""
