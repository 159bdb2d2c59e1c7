"""Settings of the process stack (`make up`): where its state lives, its ports, the login and the
metadata database. Paths and ports come from the environment, so tests can run a stack of their own;
the login comes from the same `.env` file docker compose reads."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

PROJECT_DIR = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = PROJECT_DIR / ".env.example"
# The compose stack's login variables (the names Airflow's official compose file uses).
USERNAME_VARIABLE = "_AIRFLOW_WWW_USER_USERNAME"
PASSWORD_VARIABLE = "_AIRFLOW_WWW_USER_PASSWORD"
# Optional: a PostgreSQL metadata database for the process stack (SQLite when absent or unusable).
DATABASE_VARIABLE = "STACK_DATABASE_URL"
# Settings of the pipeline itself (bucket, prefix, schedule, ...) pass from .env to Airflow.
PIPELINE_VARIABLE_PREFIX = "FRAUD_"
HOST = "127.0.0.1"
# The Python drivers Airflow needs for PostgreSQL: psycopg2 (sync) and asyncpg (async sessions).
POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg2")
POSTGRES_DRIVERS = ("psycopg2", "asyncpg")
# Every Airflow process of the project makes its AWS sessions with this factory (plugins/).
AWS_SESSION_FACTORY = {"AIRFLOW__AWS__SESSION_FACTORY": "fraud_operators.sessions.SharedLoaderSessionFactory"}


class StackError(Exception):
    """Something the user must fix: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class StackConfig:
    home: Path  # AIRFLOW_HOME: airflow.cfg, the SQLite database, logs, PID files
    cloud_state: Path
    env_file: Path
    api_port: int
    cloud_port: int

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def cloud_url(self) -> str:
        return f"http://{HOST}:{self.cloud_port}"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"


def _project_path(value: str) -> Path:
    """Relative paths are relative to the project, wherever the command runs from."""
    return (PROJECT_DIR / value).resolve()


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, str(default))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{name}={raw!r} is not a TCP port: set it to a number from 1 to 65535.")
    return int(raw)


def load_config(environ: Mapping[str, str] = os.environ) -> StackConfig:
    """The stack's settings: STACK_HOME, LOCALCLOUD_STATE, STACK_ENV_FILE, STACK_API_PORT, LOCALCLOUD_PORT."""
    return StackConfig(
        home=_project_path(environ.get("STACK_HOME", ".airflow")),
        cloud_state=_project_path(environ.get("LOCALCLOUD_STATE", ".localcloud")),
        env_file=_project_path(environ.get("STACK_ENV_FILE", ".env")),
        api_port=_port(environ, "STACK_API_PORT", 8080),
        cloud_port=_port(environ, "LOCALCLOUD_PORT", 4566),
    )


def read_env_file(config: StackConfig) -> dict[str, str]:
    """The .env file's variables, the shell's own taking precedence (as docker compose does).
    A missing .env is made from .env.example, saying so."""
    if not config.env_file.exists():
        if not ENV_EXAMPLE.exists():
            raise StackError(f"{config.env_file} is missing and so is {ENV_EXAMPLE} to make it from.")
        shutil.copyfile(ENV_EXAMPLE, config.env_file)
        print(
            f"No {config.env_file}: made it from {ENV_EXAMPLE.name}. It holds the login "
            f"({USERNAME_VARIABLE}, {PASSWORD_VARIABLE}): change the password there, then make down and "
            "make up to apply it.",
            flush=True,
        )
    values = {key: value or "" for key, value in dotenv_values(config.env_file).items()}
    read_here = (USERNAME_VARIABLE, PASSWORD_VARIABLE, DATABASE_VARIABLE)
    values.update({key: value for key, value in os.environ.items() if key in values or key in read_here})
    return values


def login(env: dict[str, str], source: str | Path) -> tuple[str, str]:
    """(username, password) of the stack's one admin user."""
    username = env.get(USERNAME_VARIABLE, "").strip()
    password = env.get(PASSWORD_VARIABLE, "")
    for name, value in ((USERNAME_VARIABLE, username), (PASSWORD_VARIABLE, password)):
        if not value:
            raise StackError(f"{name} is not set in {source}: set it (see .env.example), then run make up again.")
    if any(char in username for char in ":, "):
        raise StackError(f"{USERNAME_VARIABLE}={username!r} in {source}: a username cannot hold ':', ',' or spaces.")
    return username, password


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def database_url(config: StackConfig, env: dict[str, str]) -> tuple[str, str]:
    """(SQLAlchemy URL, why this database): PostgreSQL from STACK_DATABASE_URL when it is reachable
    and its driver is installed, SQLite under the stack's home otherwise."""
    sqlite = f"sqlite:///{config.home / 'airflow.db'}"
    url = env.get(DATABASE_VARIABLE, "").strip()
    if not url:
        return sqlite, f"SQLite in {config.home} ({DATABASE_VARIABLE} is not set)"
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise StackError(
            f"{DATABASE_VARIABLE} in {config.env_file} must be a postgresql:// URL, not {parts.scheme}://; "
            "remove it to use SQLite."
        )
    server = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    if not _reachable(parts.hostname or "localhost", parts.port or 5432):
        return sqlite, f"SQLite in {config.home}: PostgreSQL at {server} does not answer"
    missing = [driver for driver in POSTGRES_DRIVERS if importlib.util.find_spec(driver) is None]
    if missing:
        return sqlite, f"SQLite in {config.home}: PostgreSQL answers but pip install {' '.join(missing)} is needed"
    return url, f"PostgreSQL at {server}"
