"""docker-compose.yaml, checked without a Docker engine: against the Compose Specification's JSON
schema (before and after interpolation with .env.example), and for consistency with the project."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from airflow.models.connection import Connection
from dotenv import dotenv_values
from packaging.specifiers import SpecifierSet

from include.stack.login import AUTH_MANAGER

REPO = Path(__file__).resolve().parents[2]
# The Compose Specification's JSON schema (Apache 2.0), kept beside this file.
COMPOSE_SPEC = Path(__file__).with_name("compose-spec") / "compose-spec.json"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is an escaped dollar.
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's variable interpolation, applied to every string of the parsed file."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name = found.group(1) or found.group(4)
        operator, argument = found.group(2), found.group(3)
        current = variables.get(name)
        missing = current is None or (current == "" and operator and operator.startswith(":"))
        if operator and operator.endswith("?") and missing:
            raise ValueError(f"required variable {name}: {argument}")
        if operator and operator.endswith("-") and missing:
            return argument
        return current or ""

    return VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (REPO / "docker-compose.yaml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    return yaml.safe_load(compose_text)  # resolves the anchors and << merges, as Compose does


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return {key: value or "" for key, value in dotenv_values(REPO / ".env.example").items()}


@pytest.fixture(scope="module")
def interpolated(compose: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    return interpolate(compose, env_example)


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(COMPOSE_SPEC.read_text()))


def test_valid_against_the_compose_specification(
    compose: dict[str, Any], interpolated: dict[str, Any], schema_validator: jsonschema.Draft7Validator
) -> None:
    for document in (compose, interpolated):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator.iter_errors(document)]
        assert errors == []


def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], schema_validator: jsonschema.Draft7Validator
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["airflow-scheduler"]["depends_on"]["postgres"]["condition"] = "service_ready"
    broken["services"]["postgres"]["healthcheck"]["intervall"] = "10s"
    assert len(list(schema_validator.iter_errors(broken))) == 2


def test_services_of_the_airflow_3_architecture(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres", "redis", "localcloud", "airflow-init", *AIRFLOW_SERVICES, "airflow-worker"
    }
    commands = {name: services[name]["command"] for name in (*AIRFLOW_SERVICES, "airflow-worker")}
    # Each starts with the settings airflow-init wrote (include/stack/with_infra_settings.sh).
    start = ["bash", "/opt/airflow/include/stack/with_infra_settings.sh", "airflow"]
    assert commands == {
        "airflow-apiserver": [*start, "api-server"],
        "airflow-scheduler": [*start, "scheduler"],
        "airflow-dag-processor": [*start, "dag-processor"],
        "airflow-triggerer": [*start, "triggerer"],
        "airflow-worker": [*start, "celery", "worker"],
    }
    assert (REPO / start[1].removeprefix("/opt/airflow/")).is_file()
    assert services["airflow-apiserver"]["ports"] == ["8080:8080"]
    # Celery, Redis and the worker only behind the celery profile; LocalExecutor by default.
    assert {name for name, service in services.items() if "profiles" in service} == {"redis", "airflow-worker"}
    assert services["airflow-worker"]["profiles"] == services["redis"]["profiles"] == ["celery"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name != "airflow-init":  # a one-shot job: the others wait for it to complete
            assert service["healthcheck"]["test"], name
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
            # A service of the default profile can depend on a profiled one only if not required.
            if "profiles" in services[dependency] and "profiles" not in service:
                assert rule.get("required") is False, f"{name} requires {dependency} of another profile"
    for name in (*AIRFLOW_SERVICES, "airflow-worker"):
        dependencies = services[name]["depends_on"]
        assert dependencies["postgres"] == {"condition": "service_healthy"}
        assert dependencies["airflow-init"] == {"condition": "service_completed_successfully"}
    assert services["airflow-init"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # The tasks run by the scheduler call the API server and the local cloud.
    for dependency in ("airflow-apiserver", "localcloud"):
        assert services["airflow-scheduler"]["depends_on"][dependency] == {"condition": "service_healthy"}


def test_mounted_folders_exist_and_volumes_are_declared(compose: dict[str, Any]) -> None:
    services = compose["services"]
    bind_sources = set()
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source.startswith((".", "/")):
                bind_sources.add(source)
                assert (REPO / source).is_dir(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
    assert bind_sources == {"./dags", "./plugins", "./include", "./data", "./infra"}
    mounts = services["airflow-scheduler"]["volumes"]
    for folder in ("dags", "plugins", "include", "data"):
        assert any(mount.startswith(f"./{folder}:/opt/airflow/{folder}") for mount in mounts)
    # The project's modules import as include.* from /opt/airflow.
    assert services["airflow-scheduler"]["environment"]["PYTHONPATH"] == "/opt/airflow"


def test_every_variable_it_reads_is_in_env_example(compose_text: str) -> None:
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", example, flags=re.MULTILINE))
    read = {found.group(1) or found.group(4) for found in VARIABLE.finditer(compose_text) if found.group(0) != "$$"}
    assert read, "found no variables: the pattern is broken"
    assert read - documented == set()


def test_the_local_cloud_enforces_iam_and_the_stack_runs_with_the_template(interpolated: dict[str, Any]) -> None:
    services = interpolated["services"]
    localcloud = services["localcloud"]
    assert localcloud["entrypoint"] == ["python", "-m", "include.localcloud"]
    assert localcloud["environment"]["LOCALCLOUD_HOST"] == "0.0.0.0"
    assert localcloud["environment"]["LOCALCLOUD_PORT"] == "4566"
    assert localcloud["environment"]["LOCALCLOUD_IAM"] == "enforce"
    # airflow-init deploys the template with the root key of the local cloud's state volume, into
    # the file every service reads; the connection is empty unless .env sets one (a real account's).
    init = services["airflow-init"]
    assert init["depends_on"]["localcloud"] == {"condition": "service_healthy"}
    state = next(mount for mount in localcloud["volumes"] if mount.endswith(":/opt/airflow/localcloud"))
    assert f"{state}:ro" in init["volumes"]
    assert "python -m include.stack.infra --endpoint-url http://localcloud:4566" in init["command"][1]
    assert "./infra:/opt/airflow/infra:ro" in init["volumes"]  # infra.TEMPLATE, where the image has the project
    assert "--state-dir /opt/airflow/localcloud" in init["command"][1]  # where its root key is
    # The Airflow user's key (what the services' connection starts from), kept in a volume it writes.
    assert "--key-file /opt/airflow/config/airflow-credentials.json" in init["command"][1]
    assert "airflow-config:/opt/airflow/config" in init["volumes"]
    for name in (*AIRFLOW_SERVICES, "airflow-worker"):
        environment = services[name]["environment"]
        assert environment["AIRFLOW_CONN_AWS_DEFAULT"] == ""
        assert environment["INFRA_SETTINGS_FILE"].startswith("/opt/airflow/config/")
    # .env.example's real-account connection is a valid Airflow connection too.
    example = (REPO / ".env.example").read_text()
    real = re.search(r"^# AIRFLOW_CONN_AWS_DEFAULT='(.*)'$", example, flags=re.MULTILINE)
    assert real is not None
    extra = Connection.from_json(real.group(1), conn_id="aws_default").extra_dejson
    assert set(extra) == {"region_name", "role_arn"}


def test_login_comes_from_env_and_is_never_baked_into_the_image(
    compose: dict[str, Any], interpolated: dict[str, Any], env_example: dict[str, str]
) -> None:
    environment = interpolated["services"]["airflow-apiserver"]["environment"]
    assert environment["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGER
    assert environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == f"{env_example['_AIRFLOW_WWW_USER_USERNAME']}:admin"
    # The password file lives in the config volume every Airflow service mounts.
    assert environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith("/opt/airflow/config/")
    assert "airflow-config:/opt/airflow/config" in interpolated["services"]["airflow-apiserver"]["volumes"]
    assert compose["services"]["airflow-apiserver"]["env_file"] == ".env"
    init_script = compose["services"]["airflow-init"]["command"][1]
    assert "python -m include.stack.login" in init_script
    # Without a username in .env, compose refuses to start rather than use a default.
    without_login = {key: value for key, value in env_example.items() if not key.startswith("_AIRFLOW_WWW")}
    with pytest.raises(ValueError, match="_AIRFLOW_WWW_USER_USERNAME"):
        interpolate(compose, without_login)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "_AIRFLOW_WWW_USER" not in dockerfile and "PASSWORD" not in dockerfile.upper()


def test_init_script_is_valid_bash(interpolated: dict[str, Any]) -> None:
    init = interpolated["services"]["airflow-init"]
    assert init["entrypoint"] == "/bin/bash" and init["command"][0] == "-c"
    checked = subprocess.run(["bash", "-n", "-c", init["command"][1]], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    for step in ("airflow config list", "airflow db migrate", "python -m include.stack.login",
                 "python -m include.stack.infra"):
        assert step in init["command"][1]


def test_dockerfile_base_image_matches_the_pinned_airflow() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    # The base image is a build argument (make test-compose passes a stand-in) defaulting to the official one.
    base = re.search(r"^ARG AIRFLOW_BASE_IMAGE=apache/airflow:(\S+)-python(\S+)$", dockerfile, flags=re.MULTILINE)
    assert base is not None, "the Dockerfile must default AIRFLOW_BASE_IMAGE to apache/airflow:<version>-python<version>"
    assert re.search(r"^FROM \$\{AIRFLOW_BASE_IMAGE\}$", dockerfile, flags=re.MULTILINE)
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), flags=re.MULTILINE)
    constrained = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), flags=re.MULTILINE)
    assert pinned is not None and constrained is not None
    assert base.group(1) == pinned.group(1) == constrained.group(1)
    requires_python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires_python).contains(base.group(2)), f"python{base.group(2)} vs {requires_python}"
    # The image installs the project's requirements under its constraints, and the build context has them.
    assert re.search(r"pip install .*-r \S*requirements\.txt -c \S*constraints\.txt", dockerfile)
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "!requirements.txt" in ignored and "!constraints.txt" in ignored
