"""Job code run inside SageMaker processing containers (plain scripts; see schema.py)."""
