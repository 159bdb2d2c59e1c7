"""The login of the Airflow UI and REST API: Airflow's SimpleAuthManager with one admin user whose
password is the one in `.env`, written to the manager's password file before the API server starts
(SimpleAuthManager would otherwise invent a random password).

`python -m include.stack.login` does it inside the compose stack's `airflow-init` container, from
_AIRFLOW_WWW_USER_USERNAME, _AIRFLOW_WWW_USER_PASSWORD and
AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE; `make up` calls write_password_file itself."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from include.stack.config import PASSWORD_VARIABLE, StackError, login

AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORDS_FILE_VARIABLE = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"


def users_setting(username: str) -> str:
    """[core] simple_auth_manager_users: the one user, with the admin role."""
    return f"{username}:admin"


def write_password_file(path: Path, username: str, password: str) -> None:
    """SimpleAuthManager's password file ({user: password}), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({username: password}, file)
        file.write("\n")


def main() -> int:
    path = os.environ.get(PASSWORDS_FILE_VARIABLE, "")
    try:
        if not path:
            raise StackError(f"{PASSWORDS_FILE_VARIABLE} is not set: it names the file to write the login to.")
        username, password = login(dict(os.environ), "the environment (.env)")
    except StackError as error:
        print(f"login: {error}", file=sys.stderr)
        return 1
    write_password_file(Path(path), username, password)
    print(f"login: user {username!r} can log in with {PASSWORD_VARIABLE} (password file {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
