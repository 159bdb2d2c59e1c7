"""make up / make down (include/stack): bad input refused with what to do, the login and database
choices, stopping whole process trees, and (slow) a real start and stop of the whole stack."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from include.stack.config import (
    ENV_EXAMPLE,
    StackConfig,
    StackError,
    database_url,
    load_config,
    read_env_file,
)
from include.stack.infra import AIRFLOW_CREDENTIALS_FILE
from include.stack.supervisor import SERVICES, pid_file
from tests.stack.conftest import PREFIX, REPO, ProcessStack, free_port


def config_in(stack: ProcessStack) -> StackConfig:
    return load_config(stack.env)


def write_env(stack: ProcessStack, **values: str) -> None:
    """The stack's .env: .env.example with some values changed."""
    text = ENV_EXAMPLE.read_text()
    for key, value in values.items():
        text = re.sub(rf"^{key}=.*$", f"{key}={value}", text, count=1, flags=re.MULTILINE)
    (stack.root / ".env").write_text(text)


def record_pid_file(stack: ProcessStack, name: str, process: psutil.Process) -> Path:
    path = pid_file(config_in(stack), name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": process.pid, "create_time": process.create_time(), "command": []}))
    return path


def test_missing_env_is_made_from_the_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_in(ProcessStack.in_folder(tmp_path))
    values = read_env_file(config)
    assert (tmp_path / ".env").read_text() == ENV_EXAMPLE.read_text()
    assert values["_AIRFLOW_WWW_USER_USERNAME"] == "airflow"
    message = capsys.readouterr().out
    assert f"No {tmp_path / '.env'}: made it from .env.example" in message
    assert "_AIRFLOW_WWW_USER_PASSWORD" in message


def test_up_refuses_a_taken_port_and_starts_nothing(tmp_path: Path) -> None:
    stack = ProcessStack.in_folder(tmp_path)
    for variable, service in (("STACK_API_PORT", "Airflow API server"), ("LOCALCLOUD_PORT", "local cloud")):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", int(stack.env[variable])))
            taken.listen()
            refused = stack.run("up")
        assert refused.returncode == 1
        assert f"Port {stack.env[variable]} on 127.0.0.1, needed by the {service}, is taken" in refused.stderr
        assert f"make up {variable}=<port>" in refused.stderr
        assert not list((stack.home / "run").glob("*.pid"))


def test_up_refuses_a_stale_pid_file_and_down_clears_it(tmp_path: Path) -> None:
    stack = ProcessStack.in_folder(tmp_path)
    write_env(stack)
    ended = subprocess.Popen(["true"])
    dead = psutil.Process(ended.pid)
    record = {"pid": dead.pid, "create_time": dead.create_time()}
    ended.wait()
    path = pid_file(config_in(stack), "scheduler")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    refused = stack.run("up")
    assert refused.returncode == 1
    assert f"Stale PID file {path}: its scheduler process is no longer running" in refused.stderr
    assert "Run make down" in refused.stderr
    cleared = stack.run("down")
    assert cleared.returncode == 0
    assert "scheduler: not running; removed its stale PID file." in cleared.stdout
    assert not path.exists()
    assert "Nothing to stop" in stack.run("down").stdout


def test_up_refuses_to_start_twice(tmp_path: Path) -> None:
    stack = ProcessStack.in_folder(tmp_path)
    write_env(stack)
    running = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record_pid_file(stack, "api-server", psutil.Process(running.pid))
        refused = stack.run("up")
        assert refused.returncode == 1
        assert f"The stack is already running (api-server is process {running.pid}" in refused.stderr
    finally:
        running.kill()
        running.wait()


def test_down_stops_the_whole_process_tree(tmp_path: Path) -> None:
    """Children in the service's process group and descendants in groups of their own (as Airflow's
    task processes are) all stop."""
    stack = ProcessStack.in_folder(tmp_path)
    service = subprocess.Popen(
        ["bash", "-c", "sleep 300 & setsid sleep 300 & wait"], start_new_session=True
    )
    leader = psutil.Process(service.pid)
    # The second sleep leaves the leader's group only when setsid runs, after bash has forked it:
    # wait for that, not just for the two children.
    deadline = time.monotonic() + 10
    while True:
        tree = [leader, *leader.children(recursive=True)]
        groups = {os.getpgid(process.pid) for process in tree}
        if (len(tree), len(groups)) == (3, 2) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(tree) == 3
    assert len(groups) == 2
    path = record_pid_file(stack, "localcloud", leader)
    stopped = stack.run("down")
    service.wait(timeout=10)
    assert stopped.returncode == 0
    assert f"localcloud: stopped (process {leader.pid})." in stopped.stdout
    for process in tree:
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert not path.exists()


def test_up_needs_a_login(tmp_path: Path) -> None:
    stack = ProcessStack.in_folder(tmp_path)
    write_env(stack, _AIRFLOW_WWW_USER_PASSWORD="")
    refused = stack.run("up")
    assert refused.returncode == 1
    assert f"_AIRFLOW_WWW_USER_PASSWORD is not set in {stack.root / '.env'}" in refused.stderr
    write_env(stack, _AIRFLOW_WWW_USER_USERNAME="ops:team")
    refused = stack.run("up")
    assert "_AIRFLOW_WWW_USER_USERNAME='ops:team'" in refused.stderr


def test_bad_port_setting_is_named(tmp_path: Path) -> None:
    stack = ProcessStack.in_folder(tmp_path)
    stack.env["STACK_API_PORT"] = "80a"
    refused = stack.run("status")
    assert refused.returncode == 1
    assert "STACK_API_PORT='80a' is not a TCP port" in refused.stderr


def test_metadata_database_is_postgresql_only_when_usable(tmp_path: Path) -> None:
    config = config_in(ProcessStack.in_folder(tmp_path))
    url, why = database_url(config, {})
    assert url == f"sqlite:///{config.home / 'airflow.db'}" and "STACK_DATABASE_URL is not set" in why
    closed = free_port()
    url, why = database_url(config, {"STACK_DATABASE_URL": f"postgresql+psycopg2://a:b@127.0.0.1:{closed}/airflow"})
    assert url.startswith("sqlite:///") and f"PostgreSQL at 127.0.0.1:{closed} does not answer" in why
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        postgres = f"postgresql://a:b@127.0.0.1:{port}/airflow"
        url, why = database_url(config, {"STACK_DATABASE_URL": postgres})
    drivers_installed = all(
        subprocess.run([sys.executable, "-c", f"import {driver}"], capture_output=True).returncode == 0
        for driver in ("psycopg2", "asyncpg")
    )
    if drivers_installed:
        assert url == postgres
    else:
        assert url.startswith("sqlite:///") and "PostgreSQL answers but pip install" in why
    with pytest.raises(StackError, match="STACK_DATABASE_URL .* must be a postgresql:// URL, not mysql://"):
        database_url(config, {"STACK_DATABASE_URL": "mysql://a:b@localhost/airflow"})


def test_compose_init_writes_the_login(tmp_path: Path) -> None:
    """airflow-init's `python -m include.stack.login`: SimpleAuthManager's password file from .env."""
    target = tmp_path / "config" / "passwords.json"
    env = {
        **os.environ,
        "_AIRFLOW_WWW_USER_USERNAME": "ops",
        "_AIRFLOW_WWW_USER_PASSWORD": "s3cret",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(target),
    }
    written = subprocess.run(
        [sys.executable, "-m", "include.stack.login"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert written.returncode == 0, written.stderr
    assert json.loads(target.read_text()) == {"ops": "s3cret"}
    assert target.stat().st_mode & 0o077 == 0
    del env["_AIRFLOW_WWW_USER_PASSWORD"]
    refused = subprocess.run(
        [sys.executable, "-m", "include.stack.login"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 1 and "_AIRFLOW_WWW_USER_PASSWORD is not set" in refused.stderr


@pytest.mark.slow
@pytest.mark.stack
def test_up_starts_every_service_and_down_stops_exactly_them(tmp_path: Path) -> None:
    stack = ProcessStack.in_folder(tmp_path)
    processes: dict[str, psutil.Process] = {}
    started = stack.run("up")
    try:
        assert started.returncode == 0, started.stderr
        assert f"Airflow is up: open {stack.api_url} and log in as 'airflow'" in started.stdout
        assert "made it from .env.example" in started.stdout
        assert "Metadata database: SQLite" in started.stdout
        for service in SERVICES:
            record = json.loads(pid_file(config_in(stack), service.name).read_text())
            processes[service.name] = psutil.Process(record["pid"])
            assert abs(processes[service.name].create_time() - record["create_time"]) < 0.01
        assert processes["localcloud"].cmdline()[1:] == ["-m", "include.localcloud"]
        status = stack.run("status").stdout
        assert f"api-server     running (process {processes['api-server'].pid}) on {stack.api_url}" in status
        assert f"{stack.api_url} (all components healthy)" in status
        # The local cloud enforces IAM: an unsigned request is refused; the root key's, served.
        assert httpx.get(f"{stack.cloud_url}/").status_code == 403
        assert stack.client("iam").get_role(RoleName=f"{PREFIX}-airflow-us-east-1")["Role"]["RoleName"]
        # Airflow starts from the key of the Airflow user the deploy made, kept beside the root's.
        [key] = stack.client("iam").list_access_keys(UserName=f"{PREFIX}-airflow")["AccessKeyMetadata"]
        kept = json.loads((Path(stack.env["LOCALCLOUD_STATE"]) / AIRFLOW_CREDENTIALS_FILE).read_text())
        assert key["AccessKeyId"] == kept["AccessKeyId"]
        # The login is .env's: a wrong password gets no token.
        username, password = stack.login()
        token = httpx.post(f"{stack.api_url}/auth/token", json={"username": username, "password": password})
        assert token.status_code == 201
        wrong = httpx.post(f"{stack.api_url}/auth/token", json={"username": username, "password": password + "x"})
        assert wrong.status_code == 401
        again = stack.run("up")
        assert again.returncode == 1 and "The stack is already running" in again.stderr
        for log in ("localcloud", "api-server", "scheduler", "dag-processor", "triggerer", "db-migrate"):
            assert (stack.home / "logs" / f"{log}.log").stat().st_size > 0
    finally:
        stopped = stack.run("down")
    assert stopped.returncode == 0, stopped.stderr
    for name, process in processes.items():
        assert f"{name}: stopped (process {process.pid})." in stopped.stdout
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert not list((stack.home / "run").glob("*.pid"))
    assert stack.run("status").stdout.count("stopped") == len(SERVICES)
