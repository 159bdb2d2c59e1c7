"""The local cloud: one HTTP endpoint on loopback that speaks the AWS APIs the fraud pipeline
uses. Requests are routed by their SigV4 signing service and target: SageMaker, the Feature Store
runtime, the SageMaker runtime and Athena are served here; everything else goes to moto."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ThreadedTaskDispatcher
from werkzeug.wrappers import Request, Response

from include.localcloud.access.enforcer import ENFORCE, Enforcer
from include.localcloud.moto_services import MotoServices
from include.localcloud.protocol import (
    AwsError,
    JsonService,
    RequestContext,
    RestJsonService,
    error_response,
    new_request_id,
)
from include.localcloud.store import Store

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"  # moto's default account, so STS and our ARNs agree
DEFAULT_REGION = "us-east-1"
DEFAULT_PORT = 4566
DEFAULT_STATE_DIR = ".localcloud"
MAX_REQUEST_BYTES = 1024 * 1024 * 1024  # S3 uploads included; anything larger gets a 413
SERVER_THREADS = 32  # requests in flight at once; jobs and queries run in their own threads
# The front end's limits, as an AWS load balancer has them: a connection idle between requests is
# closed after IDLE_TIMEOUT (an ALB's default idle timeout), one that has not sent a whole request
# header HEADER_TIMEOUT after it opened or began a request is closed, and up to CONNECTION_LIMIT
# connections are open at once (each holds a file descriptor: at most half the process's limit).
IDLE_TIMEOUT = 60
HEADER_TIMEOUT = 10
CONNECTION_LIMIT = 1000
ALLOWED_ACTIONS_PATH = "/_localcloud/iam/allowed"  # what LOCALCLOUD_IAM=enforce allowed, per user or role
IAM_CHANGING_SERVICES = ("iam", "cloudformation")  # their writes can change users, roles and policies
# The Feature Store runtime's records (PutRecord, GetRecord, DeleteRecord) are served on the serving
# loop's own thread: each is a short piece of in-process work, and handing it to a worker thread and
# its answer back cost the server more CPU than the work.
SERVED_BY_THE_LOOP_PATH = "/FeatureGroup/"
SERVED_BY_THE_LOOP_SIGNING_SERVICE = "sagemaker"
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")


def free_port() -> int:
    """A port nothing listens on at the moment, on loopback: for servers started by the local cloud,
    the benchmarks and the tests."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def signing_scope(authorization: str) -> tuple[str, str | None]:
    """(region, service) from a SigV4 Authorization header."""
    found = _SCOPE.search(authorization)
    if found is None:
        return DEFAULT_REGION, None
    return found.group(1), found.group(2)


class LocalCloud:
    """Serve the local cloud from `state_dir` on host:port (port 0 picks a free one)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        iam: str | None = None,
    ) -> None:
        """`iam` is "enforce" to check every request against IAM; default: $LOCALCLOUD_IAM."""
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.account_id = ACCOUNT_ID
        iam = os.environ.get("LOCALCLOUD_IAM", "") if iam is None else iam
        if iam not in ("", ENFORCE):
            raise ValueError(f"LOCALCLOUD_IAM must be '{ENFORCE}' or empty, not {iam!r}")
        self.access = Enforcer(self, enforcing=iam == ENFORCE)
        self.store = Store(self.state_dir / "state.db")
        self.moto = MotoServices(self.state_dir / "moto.pickle")
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._clients_lock = threading.Lock()
        self.services: list[JsonService | RestJsonService] = self._make_services()

    def _make_services(self) -> list[JsonService | RestJsonService]:
        # Imported here: the services import this module for LocalCloud's type.
        from include.localcloud.athena.urls import services as athena
        from include.localcloud.featurestore.urls import services as featurestore
        from include.localcloud.runtime.urls import services as runtime
        from include.localcloud.sagemaker.urls import services as sagemaker

        return [cls(self) for module in (sagemaker, featurestore, runtime, athena) for cls in module()]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, service: str, region: str = DEFAULT_REGION, role_arn: str | None = None) -> Any:
        """A boto3 client of this local cloud, for the services' own background work. With IAM
        enforced and a `role_arn`, it calls with that role's temporary credentials, as SageMaker
        does a job's S3 and Logs work with the job's execution role."""
        credentials: tuple[str, str, str | None] = (self.access.internal_key_id, self.access.internal_secret, None)
        if role_arn is not None and self.access.enforcing:
            role = self.access.role_credentials(role_arn)
            credentials = (role.access_key_id, role.secret_access_key, role.session_token)
        with self._clients_lock:
            key = (service, region, credentials)
            if key not in self._clients:
                self._clients[key] = boto3.session.Session().client(
                    service,
                    region_name=region,
                    endpoint_url=self.url,
                    aws_access_key_id=credentials[0],
                    aws_secret_access_key=credentials[1],
                    aws_session_token=credentials[2],
                    config=Config(retries={"max_attempts": 2}, max_pool_connections=32),
                )
            return self._clients[key]

    def container_credentials(self, role_arn: str | None) -> dict[str, str]:
        """The AWS_* credentials of a job's or model server's process: its execution role's
        temporary credentials when IAM is enforced, placeholders otherwise."""
        if role_arn is not None and self.access.enforcing:
            return self.access.role_credentials(role_arn).environment()
        return {"AWS_ACCESS_KEY_ID": "localcloud", "AWS_SECRET_ACCESS_KEY": "localcloud"}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalCloud:
        """Bind, restore state and serve in a background thread."""
        self.moto.restore()
        # waitress: keep-alive connections and a fixed thread pool, so a boto3 client reuses
        # its connection instead of paying a TCP handshake and a new thread per request. poll()
        # instead of select(), which cannot watch descriptors past 1023.
        self._server = create_server(
            self,
            host=self.host,
            port=self.port,
            max_request_body_size=MAX_REQUEST_BYTES,
            connection_limit=min(CONNECTION_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2),
            channel_timeout=IDLE_TIMEOUT,
            cleanup_interval=min(10, IDLE_TIMEOUT),
            asyncore_use_poll=True,
            ident="localcloud",
            _dispatcher=_Dispatcher(SERVER_THREADS),
        )
        self._server.channel_class = _Channel
        self.port = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name="localcloud", daemon=True)
        self._thread.start()
        self.moto.start()
        for service in self.services:
            service.start()
        log.info("local cloud serving on %s, state in %s", self.url, self.state_dir)
        return self

    def stop(self) -> None:
        """Stop serving; running jobs end Failed, endpoints stop, state is saved."""
        for service in reversed(self.services):
            service.stop()
        if self._server is not None and self._thread is not None:
            _shutdown(self._server, self._thread)
        self.moto.stop()
        self.store.close()

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        region, signing_service = signing_scope(request.headers.get("Authorization", ""))
        if request.path == ALLOWED_ACTIONS_PATH and request.method == "GET":
            body = json.dumps(self.access.allowed_actions(), indent=1)
            return Response(body, content_type="application/json")(environ, start_response)
        if self.access.enforcing:
            denial = self.access.check(request, signing_service, region)
            if "_cached_data" in request.__dict__:  # the check read the body: moto reads it again
                environ["wsgi.input"] = io.BytesIO(request.get_data(cache=True))
            if denial is not None:
                return denial(environ, start_response)
        for service in self.services:
            if service.matches(request, signing_service):
                return self._serve(service, request, region)(environ, start_response)
        if signing_service in {s.model.signing_name for s in self.services} | {"athena"}:
            error = AwsError("UnknownOperationException", f"No route for {request.method} {request.path}.", 404)
            return error_response(error, new_request_id(), rest=True)(environ, start_response)
        answer = self.moto(environ, start_response)
        if signing_service in IAM_CHANGING_SERVICES and request.method == "POST":
            self.access.invalidate()
        return answer

    def _serve(self, service: JsonService | RestJsonService, request: Request, region: str) -> Response:
        ctx = RequestContext(self, region, ACCOUNT_ID, new_request_id())
        rest = isinstance(service, RestJsonService)
        try:
            response = service.handle(request, ctx)
        except AwsError as error:
            return error_response(error, ctx.request_id, rest)
        except Exception as exc:  # a bug must answer 500 and leave the server up
            log.exception("internal error in %s", type(service).__name__)
            return error_response(AwsError("InternalFailure", str(exc), 500), ctx.request_id, rest)
        response.headers["x-amzn-RequestId"] = ctx.request_id
        return response


class _Channel(HTTPChannel):
    """waitress's connection, with the header timeout it lacks (its channel_timeout closes only
    connections silent that long, so one that sends a byte now and then could hold a connection
    forever, and enough of them all the connections the server takes), and serving the requests
    _Dispatcher leaves to the serving loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_deadline: float | None = time.monotonic() + HEADER_TIMEOUT
        self.reading = False  # True while the serving loop reads and serves this channel
        self.serve_in_the_loop = False

    def received(self, data: bytes) -> bool:
        self.reading = True
        try:
            return self._received(data)
        finally:
            self.reading = False

    def _received(self, data: bytes) -> bool:
        result = super().received(data)
        if self.request is not None and not self.request.headers_finished:
            if self.header_deadline is None:
                self.header_deadline = time.monotonic() + HEADER_TIMEOUT
        else:
            self.header_deadline = None
        while self.serve_in_the_loop:  # set by _Dispatcher; serving may queue the next request
            self.serve_in_the_loop = False
            self.service()
        return result

    def writable(self) -> bool:
        # Asked on every turn of the serving loop (at least once a second): closing is a write.
        if self.header_deadline is not None and not self.requests and time.monotonic() > self.header_deadline:
            self.will_close = True
        return bool(super().writable())

    def send_continue(self) -> None:
        """waitress 3.0.2 answers "Expect: 100-continue" on a request without a body (botocore
        sends one for an empty S3 upload) and then waits forever for that body: such a request
        needs no 100."""
        if self.request.content_length == 0 and not self.request.chunked:
            self.request.expect_continue = False
            return
        super().send_continue()


class _Dispatcher(ThreadedTaskDispatcher):
    """waitress's worker threads, but for SERVED_BY_THE_LOOP_* requests the serving loop has just read,
    which the channel serves itself when it has read them (add_task is called while the channel
    holds its requests lock). A request a worker queues after another on its connection stays with
    the workers: the loop would not come back to it."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.set_thread_count(threads)

    def add_task(self, task: Any) -> None:
        request = task.requests[0] if isinstance(task, _Channel) and task.reading else None
        if (request is not None and request.path.startswith(SERVED_BY_THE_LOOP_PATH)
                and signing_scope(request.headers.get("AUTHORIZATION", ""))[1] == SERVED_BY_THE_LOOP_SIGNING_SERVICE):
            task.serve_in_the_loop = True
        else:
            super().add_task(task)


def _shutdown(server: BaseWSGIServer, thread: threading.Thread) -> None:
    """Stop a waitress server run in a thread. The serving loop closes its own sockets (closing
    them from another thread would pull them out from under its select()), the loop ends when
    none is left, then running requests finish."""
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    thread.join()
    server.task_dispatcher.shutdown()
