"""The data plane of endpoints: model server processes and the table that routes each endpoint's
invocations to its current server. The SageMaker control plane starts, switches and stops servers;
the runtime only looks routes up."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from botocore.exceptions import ClientError

from include.localcloud.server import LocalCloud, free_port

log = logging.getLogger(__name__)

MODEL_SERVER_SCRIPT = Path(__file__).parent.parent / "sagemaker" / "containers" / "model_server.py"
INVOCATION_TIMEOUT_SECONDS = 60.0  # SageMaker's limit for a real-time invocation
PING_INTERVAL_SECONDS = 0.05
STOP_GRACE_SECONDS = 5.0
LOG_TAIL_CHARS = 800


class ModelServerError(Exception):
    """A model server that could not start, with the reason (for the endpoint's FailureReason)."""


class ModelUnreachable(Exception):
    """The model server did not answer (it died or closed the connection)."""


def log_group(endpoint_name: str) -> str:
    return f"/aws/sagemaker/Endpoints/{endpoint_name}"


class ModelServer:
    """One model server process (containers/model_server.py) serving the model unpacked in
    `workdir`/model, with a pool of keep-alive connections to it."""

    def __init__(
        self, workdir: Path, endpoint_name: str, variant_name: str, environment: dict[str, str] | None,
        credentials: dict[str, str],
    ) -> None:
        self.workdir = workdir
        self.environment = environment or {}  # the model container's Environment
        self.credentials = credentials  # AWS_* of the model's execution role
        self.endpoint_name = endpoint_name
        self.variant_name = variant_name
        self.log_path = workdir / "model-server.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.in_flight = 0  # guarded by the routes' lock (see EndpointRoutes.use)
        self._idle: list[http.client.HTTPConnection] = []
        self._idle_lock = threading.Lock()
        self._stopping = threading.Event()
        self._log_offset = 0
        self._log_lock = threading.Lock()
        self._log_stream_created = False

    def start(self, on_exit: Callable[[ModelServer, int], None]) -> None:
        """Spawn the server; `on_exit(server, returncode)` runs if it exits without stop()."""
        self.port = free_port()
        env = {
            **os.environ,
            **self.environment,
            **self.credentials,
            "SAGEMAKER_BASE_DIR": str(self.workdir),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
        }
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(MODEL_SERVER_SCRIPT)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the terminal is the local cloud's to handle
            )
        threading.Thread(
            target=self._watch, args=(on_exit,), name=f"model-server-{self.port}", daemon=True
        ).start()

    def _watch(self, on_exit: Callable[[ModelServer, int], None]) -> None:
        assert self.process is not None
        code = self.process.wait()
        if not self._stopping.is_set():
            on_exit(self, code)

    def wait_ready(self, timeout: float, cancelled: threading.Event) -> None:
        """Return once GET /ping answers 200; raise ModelServerError if the process exits first,
        the timeout passes, or `cancelled` is set."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ModelServerError(
                    f"The model server exited with code {self.process.returncode}: {self.log_tail()}"
                )
            if cancelled.is_set():
                raise ModelServerError("The deployment was cancelled.")
            if self._ping():
                return
            if time.monotonic() > deadline:
                raise ModelServerError(
                    f"The model server did not pass the ping health check within {timeout:.0f} seconds: "
                    f"{self.log_tail()}"
                )
            time.sleep(PING_INTERVAL_SECONDS)

    def _ping(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/ping")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[int, str, bytes]:
        """POST /invocations: (status, content type, body) of the model server's answer."""
        headers = {"Content-Type": content_type or "text/csv"}
        if accept:
            headers["Accept"] = accept
        with self._idle_lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=INVOCATION_TIMEOUT_SECONDS
            )
        try:
            connection.request("POST", "/invocations", body, headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ModelUnreachable(f"{type(exc).__name__}: {exc}") from exc
        if response.will_close:
            connection.close()
        else:
            with self._idle_lock:
                self._idle.append(connection)
        return response.status, response.getheader("Content-Type", "application/octet-stream"), answer

    def stop(self) -> None:
        """Stop the process, close the connections and remove the working folder."""
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            try:  # workers left by a server that was killed: its process group (start_new_session)
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def publish_logs(self, logs: Any) -> None:
        """Copy the lines logged since the last call to CloudWatch Logs (`logs` is a boto3
        client), in the endpoint's log group as SageMaker does for its containers."""
        with self._log_lock:
            lines = self._new_log_lines()
            if not lines:
                return
            group, stream = log_group(self.endpoint_name), f"{self.variant_name}/{self.workdir.name}"
            try:
                if not self._log_stream_created:
                    try:
                        logs.create_log_group(logGroupName=group)
                    except logs.exceptions.ResourceAlreadyExistsException:
                        pass  # made by an earlier server of this endpoint
                    logs.create_log_stream(logGroupName=group, logStreamName=stream)
                    self._log_stream_created = True
                stamp = int(time.time() * 1000)
                events = [{"timestamp": stamp, "message": line} for line in lines]
                logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
            except ClientError:  # logs are a convenience; never fail serving over them
                log.warning("could not write the logs of endpoint %s", self.endpoint_name, exc_info=True)

    def _new_log_lines(self) -> list[str]:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        running = self.process is not None and self.process.poll() is None
        complete = data[: data.rfind(b"\n") + 1] if running else data  # a running server may be mid-line
        self._log_offset += len(complete)
        return [line for line in complete.decode(errors="replace").splitlines() if line.strip()]

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return "no output"
        return text[-LOG_TAIL_CHARS:] or "no output"


class EndpointRoutes:
    """Endpoint name -> its serving model server. Taking a route and counting the request in
    flight happen under one lock, so a switched-out server is drained before it stops."""

    def __init__(self) -> None:
        self._servers: dict[str, ModelServer] = {}
        self._expected: set[str] = set()  # endpoints whose server is starting again after a restart
        self._lock = threading.Condition()

    @contextmanager
    def use(
        self, endpoint_name: str, wait: float = INVOCATION_TIMEOUT_SECONDS
    ) -> Iterator[ModelServer | None]:
        """The endpoint's server (None if it has none), counted in flight while in use. An
        endpoint that was InService before a restart is waited for until its server is back."""
        with self._lock:
            self._lock.wait_for(
                lambda: endpoint_name in self._servers or endpoint_name not in self._expected, wait
            )
            server = self._servers.get(endpoint_name)
            if server is not None:
                server.in_flight += 1
        try:
            yield server
        finally:
            if server is not None:
                with self._lock:
                    server.in_flight -= 1
                    self._lock.notify_all()

    def expect(self, endpoint_name: str) -> None:
        with self._lock:
            self._expected.add(endpoint_name)

    def forget(self, endpoint_name: str) -> None:
        """The expected server will not come (its start failed or was cancelled)."""
        with self._lock:
            self._expected.discard(endpoint_name)
            self._lock.notify_all()

    def switch(self, endpoint_name: str, server: ModelServer) -> ModelServer | None:
        """Route to `server` from now on; returns the previous server (drain it before stopping it)."""
        with self._lock:
            previous = self._servers.get(endpoint_name)
            self._servers[endpoint_name] = server
            self._expected.discard(endpoint_name)
            self._lock.notify_all()
        return previous

    def remove(self, endpoint_name: str, only: ModelServer | None = None) -> ModelServer | None:
        """Stop routing to the endpoint (only if `only` serves it, when given); returns the server
        that served it (drain it before stopping it)."""
        with self._lock:
            current = self._servers.get(endpoint_name)
            if current is None or (only is not None and current is not only):
                return None
            del self._servers[endpoint_name]
        return current

    def remove_all(self) -> list[ModelServer]:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
            self._expected.clear()
            self._lock.notify_all()
        return servers

    def drain(self, server: ModelServer, timeout: float = INVOCATION_TIMEOUT_SECONDS) -> None:
        """Wait until no request routed to `server` is in flight (it gets no new ones once unrouted)."""
        with self._lock:
            self._lock.wait_for(lambda: server.in_flight == 0, timeout)


_routes: WeakKeyDictionary[LocalCloud, EndpointRoutes] = WeakKeyDictionary()
_routes_lock = threading.Lock()


def endpoint_routes(cloud: LocalCloud) -> EndpointRoutes:
    """The routing table of one local cloud, shared by its control plane and its runtime."""
    with _routes_lock:
        if cloud not in _routes:
            _routes[cloud] = EndpointRoutes()
        return _routes[cloud]
