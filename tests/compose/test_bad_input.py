"""make test-compose's bad input, cheaply (no engine, no images): a port taken, a .env without a
login, an engine that cannot start. Each says in one line what is wrong and what to do, before
anything runs or after stopping what it started."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from include.localcloud.server import free_port
from include.stack.config import StackError, login
from tests.compose import __main__ as compose_test
from tests.compose import engine


def test_a_taken_port_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setattr(compose_test, "PORTS", {port: "airflow-apiserver"})
    compose_test.check_ports_free()  # free: no error
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(engine.ComposeTestError) as refused:
            compose_test.check_ports_free()
    message = str(refused.value)
    assert f"Port {port} on 127.0.0.1, needed by the airflow-apiserver service, is taken" in message
    assert f"lsof -i :{port}" in message and "\n" not in message


def test_a_env_without_the_login_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(StackError) as refused:
        login({"_AIRFLOW_WWW_USER_PASSWORD": "secret"}, tmp_path / ".env")
    assert "_AIRFLOW_WWW_USER_USERNAME is not set in" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a Docker engine needs root")
def test_an_engine_that_cannot_start_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    work = tmp_path / "engine"
    with pytest.raises(engine.ComposeTestError) as refused:
        engine.start(work, dockerd="/bin/false")
    message = str(refused.value)
    assert message.startswith("The Docker engine exited") and "start Docker yourself" in message
    assert "\n" not in message
    assert not work.exists()


def test_without_root_or_an_engine_it_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(engine.ComposeTestError) as refused:
        engine.start(tmp_path / "engine")
    assert "starting one needs root: start Docker, or point DOCKER_HOST" in str(refused.value)
