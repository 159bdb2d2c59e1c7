"""The dev stack as local processes, for machines without Docker: the same services as
docker-compose.yaml (the local cloud, Airflow's API server, scheduler, DAG processor and triggerer),
each in its own process group with its PID file and log under the stack's home (.airflow/).
`down` stops exactly the processes `up` started, and everything they started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from include.localcloud.access.enforcer import ENFORCE
from include.pipeline.settings import Settings
from include.stack.config import (
    AWS_SESSION_FACTORY,
    HOST,
    PASSWORD_VARIABLE,
    PIPELINE_VARIABLE_PREFIX,
    PROJECT_DIR,
    StackConfig,
    StackError,
    database_url,
    login,
    read_env_file,
)
from include.stack.infra import InfraError, deploy_local, local_connection
from include.stack.login import AUTH_MANAGER, users_setting, write_password_file

STARTUP_TIMEOUT_SECONDS = 300  # cold imports of five Python processes on a 2-core laptop
STOP_TIMEOUT_SECONDS = 30
LOG_TAIL_LINES = 30
# Airflow components whose heartbeat /api/v2/monitor/health reports.
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
PARALLELISM = 8  # task slots: the DAG's widest stage runs at once, on a 2-core laptop too
# The local cloud stands in for an AWS account, in the pipeline's default region.
LOCAL_CLOUD_REGION = Settings.region


@dataclass(frozen=True)
class Service:
    name: str
    arguments: tuple[str, ...]  # after the interpreter


# Start order: the API server before the scheduler, whose tasks talk to its execution API.
SERVICES = (
    Service("localcloud", ("-m", "include.localcloud")),
    Service("api-server", ("-m", "airflow", "api-server")),
    Service("scheduler", ("-m", "airflow", "scheduler")),
    Service("dag-processor", ("-m", "airflow", "dag-processor")),
    Service("triggerer", ("-m", "airflow", "triggerer")),
)
# Stop order: the scheduler ends its tasks while the API server and the local cloud still answer them.
STOP_ORDER = ("triggerer", "dag-processor", "scheduler", "api-server", "localcloud")


def deploy_infra(config: StackConfig, environment: dict[str, str]) -> None:
    """infra/template.yaml into the local cloud (include/stack/infra.py), with the pipeline's
    settings in `environment`; Airflow then runs with the bucket and the roles it made: FRAUD_*
    from its outputs, and an aws_default connection that assumes its Airflow role, starting from
    the key of the Airflow user the deploy made."""
    try:
        infra, user = deploy_local(config.cloud_url, Settings.from_env(environment), config.cloud_state)
    except InfraError as error:
        raise StackError(str(error)) from error
    environment.update(infra.environment())
    environment["AIRFLOW_CONN_AWS_DEFAULT"] = local_connection(config.cloud_url, LOCAL_CLOUD_REGION, infra,
                                                               user.credentials)


def service_environment(config: StackConfig, env: dict[str, str], database: str, username: str) -> dict[str, str]:
    """The environment of every service: the shell's, the pipeline's FRAUD_* settings from .env,
    and the Airflow configuration of this stack (deploy_infra adds the AWS connection)."""
    environment = dict(os.environ)
    # Jobs and endpoints are waited for in the triggerer, freeing the worker slot (.env may say false).
    environment.setdefault("FRAUD_DEFERRABLE", "true")
    environment.update({key: value for key, value in env.items() if key.startswith(PIPELINE_VARIABLE_PREFIX)})
    python_path = [str(PROJECT_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment.update(
        {
            "PYTHONPATH": os.pathsep.join(python_path),
            "LOCALCLOUD_HOST": HOST,
            "LOCALCLOUD_PORT": str(config.cloud_port),
            "LOCALCLOUD_STATE": str(config.cloud_state),
            "AIRFLOW_HOME": str(config.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_DIR / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Triggered runs start at once; a schedule (FRAUD_DETECTION_SCHEDULE) runs without a click.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # The LocalExecutor forks this many workers up front (Airflow's default, 32, on a laptop).
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users_setting(username),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(config.password_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(config.log_dir),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(config.api_port),
            "AIRFLOW__API__BASE_URL": config.api_url,
            "AIRFLOW__API__WORKERS": "1",
            **AWS_SESSION_FACTORY,
            # The pipeline's region (include/pipeline/settings.py) agrees with the connection's.
            "AWS_REGION": LOCAL_CLOUD_REGION,
            "AWS_DEFAULT_REGION": LOCAL_CLOUD_REGION,
        }
    )
    return environment


# -- PID files -----------------------------------------------------------------------------------
def pid_file(config: StackConfig, name: str) -> Path:
    return config.run_dir / f"{name}.pid"


def log_file(config: StackConfig, name: str) -> Path:
    return config.log_dir / f"{name}.log"


def _service_url(config: StackConfig, name: str) -> str | None:
    return {"api-server": config.api_url, "localcloud": config.cloud_url}.get(name)


def _write_pid_file(config: StackConfig, name: str, process: psutil.Process) -> None:
    record = {
        "pid": process.pid,
        "create_time": process.create_time(),
        "command": process.cmdline(),
        "url": _service_url(config, name),
    }
    pid_file(config, name).write_text(json.dumps(record) + "\n")


def _read_pid_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _recorded_process(path: Path) -> psutil.Process | None:
    """The live process a PID file names, or None when it is gone (or its PID now belongs to another
    process: the recorded start time tells them apart)."""
    record = _read_pid_file(path)
    try:
        process = psutil.Process(int(record["pid"]))
        if abs(process.create_time() - float(record["create_time"])) > 0.01:
            return None
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except (ValueError, KeyError, TypeError, psutil.NoSuchProcess):
        return None


def service_process(config: StackConfig, name: str) -> psutil.Process | None:
    """The running process of a service started with its PID file (make up, make run), or None."""
    return _recorded_process(pid_file(config, name))


def _pid_files(config: StackConfig) -> Iterator[tuple[str, Path]]:
    for service in SERVICES:
        path = pid_file(config, service.name)
        if path.exists():
            yield service.name, path


# -- checks before starting -----------------------------------------------------------------------
def _check_not_running(config: StackConfig) -> None:
    for name, path in _pid_files(config):
        process = _recorded_process(path)
        if process is not None:
            raise StackError(
                f"The stack is already running ({name} is process {process.pid}, see {path}): "
                f"open {config.api_url}, or run make down to stop it first."
            )
        raise StackError(
            f"Stale PID file {path}: its {name} process is no longer running, so the stack was not stopped "
            "with make down. Run make down to clear what is left, then make up."
        )


def _check_port_free(port: int, variable: str, service: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            raise StackError(
                f"Port {port} on {HOST}, needed by the {service}, is taken ({error.strerror}): stop the program "
                f"listening there (lsof -i :{port} names it), or pick another port: make up {variable}=<port>."
            ) from None


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- up ------------------------------------------------------------------------------------------
def start_service(config: StackConfig, service: Service, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_file(config, service.name).open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} make up starts {service.name}\n".encode())
        log.flush()
        process = subprocess.Popen(
            [sys.executable, *service.arguments],
            cwd=PROJECT_DIR,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make down signals the whole group
        )
    _write_pid_file(config, service.name, psutil.Process(process.pid))
    return process


def start_local_cloud(config: StackConfig, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    """The local cloud's service. It checks every request against the template's roles, as an
    account would, unless the environment's LOCALCLOUD_IAM says otherwise."""
    return start_service(config, SERVICES[0], {"LOCALCLOUD_IAM": ENFORCE, **environment})


def _migrate_database(config: StackConfig, environment: dict[str, str]) -> None:
    path = log_file(config, "db-migrate")
    with path.open("ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            cwd=PROJECT_DIR,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise StackError(f"airflow db migrate failed; the end of {path}:\n{_log_tail(path)}")


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def local_cloud_answers(config: StackConfig) -> bool:
    try:
        with urllib.request.urlopen(f"{config.cloud_url}/", timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code == 403  # enforcing IAM, it refuses an unsigned request, as S3 does
    except (urllib.error.URLError, OSError):
        return False


def _unhealthy_components(api_url: str) -> list[str]:
    """The Airflow components not yet healthy, per the API server's health endpoint."""
    health = _get_json(f"{api_url}/api/v2/monitor/health")
    if health is None:
        return ["api-server"]
    return [name for name in HEALTH_COMPONENTS if (health.get(name) or {}).get("status") != "healthy"]


def _wait(config: StackConfig, started: dict[str, subprocess.Popen[bytes]], what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not ready():
        for name, process in started.items():
            if process.poll() is not None:
                path = log_file(config, name)
                raise StackError(
                    f"{name} exited with code {process.returncode} while starting; the end of {path}:\n"
                    f"{_log_tail(path)}"
                )
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} not ready after {STARTUP_TIMEOUT_SECONDS} s; see the logs in {config.log_dir}."
            )
        time.sleep(1)


def up(config: StackConfig) -> None:
    """Start the stack and return once every component is healthy; on any failure stop what started."""
    env = read_env_file(config)
    username, _ = login(env, config.env_file)
    _check_not_running(config)
    _check_port_free(config.api_port, "STACK_API_PORT", "Airflow API server")
    _check_port_free(config.cloud_port, "LOCALCLOUD_PORT", "local cloud")
    for folder in (config.home, config.run_dir, config.log_dir, config.cloud_state):
        folder.mkdir(parents=True, exist_ok=True)
    database, why = database_url(config, env)
    print(f"Metadata database: {why}.", flush=True)
    write_password_file(config.password_file, username, env[PASSWORD_VARIABLE])
    environment = service_environment(config, env, database, username)
    print("Migrating the metadata database...", flush=True)
    _migrate_database(config, environment)
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        started["localcloud"] = start_local_cloud(config, environment)
        _wait(config, started, f"The local cloud on {config.cloud_url}", lambda: local_cloud_answers(config))
        print(f"Local cloud ready on {config.cloud_url} (state in {config.cloud_state}).", flush=True)
        deploy_infra(config, environment)
        print(f"Deployed infra/template.yaml: bucket {environment['FRAUD_BUCKET']}, execution role "
              f"{environment['FRAUD_EXECUTION_ROLE_ARN']}.", flush=True)
        for service in SERVICES[1:]:
            started[service.name] = start_service(config, service, environment)
        print("Starting Airflow: api-server, scheduler, dag-processor, triggerer...", flush=True)
        _wait(config, started, "Airflow", lambda: not _unhealthy_components(config.api_url))
    except BaseException:
        print("Start-up failed: stopping what was started.", file=sys.stderr, flush=True)
        down(config, quiet=True)
        raise
    print(
        f"\nAirflow is up: open {config.api_url} and log in as {username!r} with the password in "
        f"{config.env_file} ({PASSWORD_VARIABLE}).\n"
        f"Logs: {config.log_dir}. Stop everything with: make down",
        flush=True,
    )


# -- down ----------------------------------------------------------------------------------------
def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(process: psutil.Process) -> bool:
    """SIGTERM the process group and every descendant outside it (Airflow runs each task in a
    process group of its own), wait, then SIGKILL what is left. True when it stopped without SIGKILL."""
    tree = _tree(process)
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for member in tree:
        try:
            if os.getpgid(member.pid) != process.pid:
                member.terminate()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        tree = [member for member in {*tree, *_tree(process)} if _alive(member)]
        if not tree:
            return True
        time.sleep(0.2)
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    return False


def down(config: StackConfig, quiet: bool = False) -> None:
    """Stop the processes the PID files name, in STOP_ORDER, and remove the PID files."""
    found = dict(_pid_files(config))
    if not found and not quiet:
        print(f"Nothing to stop: no PID files in {config.run_dir}.")
    for name in STOP_ORDER:
        if name not in found:
            continue
        process = _recorded_process(found[name])
        if process is None:
            print(f"{name}: not running; removed its stale PID file.")
        elif _stop(process):
            print(f"{name}: stopped (process {process.pid}).")
        else:
            print(f"{name}: killed (process {process.pid} ignored SIGTERM for {STOP_TIMEOUT_SECONDS} s).")
        found[name].unlink()


# -- status, logs --------------------------------------------------------------------------------
def status(config: StackConfig) -> None:
    """Print each service's state, and the health of Airflow's components when all run."""
    running = []
    for service in SERVICES:
        path = pid_file(config, service.name)
        process = _recorded_process(path) if path.exists() else None
        if process is not None:
            running.append(service.name)
            url = _read_pid_file(path).get("url")
            state = f"running (process {process.pid})" + (f" on {url}" if url else "")
        else:
            state = "stale PID file: run make down" if path.exists() else "stopped"
        print(f"{service.name:14} {state}")
    if len(running) == len(SERVICES):
        api_url = _read_pid_file(pid_file(config, "api-server"))["url"]
        unhealthy = _unhealthy_components(api_url)
        health = f"unhealthy: {', '.join(unhealthy)}" if unhealthy else "all components healthy"
        print(f"{'airflow':14} {api_url} ({health})")


def show_logs(config: StackConfig, lines: int) -> None:
    for service in SERVICES:
        path = log_file(config, service.name)
        print(f"==> {path} <==\n{_log_tail(path, lines)}\n")
