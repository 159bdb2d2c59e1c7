"""The dev stack: `python -m include.stack up|down|status|logs` runs the services of
docker-compose.yaml as local processes (make up / make down)."""
