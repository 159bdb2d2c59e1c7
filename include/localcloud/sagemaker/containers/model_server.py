"""The inference server of the built-in XGBoost image, following SageMaker's container contract:
the model is unpacked in <base>/model (base = $SAGEMAKER_BASE_DIR or /opt/ml), the server listens on
$SAGEMAKER_BIND_TO_PORT (default 8080) and answers `GET /ping` and `POST /invocations`. Like the
SageMaker inference toolkit's server, it runs $SAGEMAKER_MODEL_SERVER_WORKERS worker processes (default:
one per CPU) on one listening socket, so requests are served in parallel beyond one interpreter's GIL.

Requests: text/csv rows of features (no header, no label; an empty field is a missing value), or
application/json as {"instances": [[...], ...]}, {"instances": [{"features": [...]}, ...]},
{"features": [...]} or a bare list of rows. Responses, chosen by Accept: text/csv (default; one
prediction per line), application/json ({"predictions": [{"score": p}, ...]}) or
application/jsonlines (one {"score": p} per line). Errors answer 4xx/5xx with a plain-text message."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

if __name__ == "__main__":
    # xgboost imports scikit-learn when installed, for its estimators: with scipy.stats, 0.8 s of
    # every start of this process, which needs neither. Run as a script, it marks it absent.
    sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]
import xgboost as xgb  # noqa: E402

MODEL_FILE = "xgboost-model"
MAX_CONTENT_LENGTH = 6 * 1024 * 1024  # SageMaker's real-time payload limit
# Below this many rows Python's float() beats pandas' fixed cost (~0.6 ms a call).
SMALL_CSV_ROWS = 50
# Loopback only: the local cloud's runtime is the one client.
HOST = "127.0.0.1"

log = logging.getLogger("model_server")


class RequestError(Exception):
    """A request the model cannot answer, with the HTTP status that says why."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def load_booster(model_dir: Path) -> xgb.Booster:
    path = model_dir / MODEL_FILE
    if not path.is_file():
        found = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
        raise RuntimeError(f"model artifact has no '{MODEL_FILE}' file (found: {found or 'nothing'})")
    booster = xgb.Booster()
    booster.load_model(str(path))
    # One thread a request, as the built-in container does: requests run in parallel instead.
    booster.set_param("nthread", 1)
    return booster


def media_type(header: str | None, default: str) -> str:
    value = (header or "").split(";")[0].strip().lower()
    return default if value in ("", "*/*") else value


def parse_csv(body: bytes) -> np.ndarray:
    text = body.strip()
    rows = text.count(b"\n") + 1
    fields = text.count(b",") + rows
    ragged = RequestError(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Loading csv data failed: rows have different numbers of fields"
    )
    try:
        if rows < SMALL_CSV_ROWS:
            lines = [line.split(b",") for line in text.split(b"\n")]
            if len({len(line) for line in lines}) != 1:
                raise ragged
            return np.array(
                [[float(f) if f.strip() else np.nan for f in line] for line in lines], dtype=np.float64
            )
        matrix = pd.read_csv(io.BytesIO(text), header=None, dtype=np.float64).to_numpy()
    except ValueError as exc:
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Loading csv data failed, please ensure data is in csv format: {str(exc).strip()}",
        ) from exc
    if matrix.size != fields:  # pandas pads short rows with NaN and skips blank lines
        raise ragged
    return matrix


def parse_json(body: bytes) -> np.ndarray:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Loading json data failed: {exc}") from exc
    if isinstance(document, dict) and "instances" in document:
        rows = document["instances"]
        if isinstance(rows, list):
            rows = [row["features"] if isinstance(row, dict) and "features" in row else row for row in rows]
    elif isinstance(document, dict) and "features" in document:
        rows = [document["features"]]
    elif isinstance(document, list):
        rows = document if document and isinstance(document[0], list) else [document]
    else:
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            'JSON input must be {"instances": [[...], ...]}, {"features": [...]} or a list of rows',
        )
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"JSON rows must be lists of numbers: {exc}"
        ) from exc
    if matrix.ndim != 2:
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "JSON rows must be lists of numbers of equal length"
        )
    return matrix


PARSERS = {"text/csv": parse_csv, "application/json": parse_json}


def encode(predictions: np.ndarray, accept: str) -> bytes:
    values = predictions.tolist()
    if accept == "text/csv":
        if predictions.ndim == 2:  # multi-class: one row of class probabilities per line
            return "\n".join(",".join(map(str, row)) for row in values).encode()
        return "\n".join(map(str, values)).encode()
    if accept == "application/json":
        return json.dumps({"predictions": [{"score": value} for value in values]}).encode()
    if accept == "application/jsonlines":
        return "".join(json.dumps({"score": value}) + "\n" for value in values).encode()
    raise RequestError(
        HTTPStatus.NOT_ACCEPTABLE,
        f"Accept {accept} not supported; use text/csv, application/json or application/jsonlines",
    )


class Model:
    def __init__(self, booster: xgb.Booster) -> None:
        self.booster = booster
        self.num_features = booster.num_features()

    def invoke(self, body: bytes, content_type: str, accept: str) -> bytes:
        parser = PARSERS.get(content_type)
        if parser is None:
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-type {content_type} not supported; use text/csv or application/json",
            )
        rows = parser(body)
        if rows.shape[1] != self.num_features:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"Unable to evaluate payload provided: feature size of {content_type} inference data "
                f"{rows.shape[1]} is not consistent with feature size of trained model {self.num_features}",
            )
        # inplace_predict is thread safe and skips building a DMatrix.
        return encode(self.booster.inplace_predict(rows), accept)


class InferenceHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the runtime reuses its connections
    disable_nagle_algorithm = True  # headers and body are two writes; do not delay the second
    server: InferenceServer

    def do_GET(self) -> None:
        if self.path == "/ping":
            self.reply(HTTPStatus.OK, b"", "text/plain")
        else:
            self.reply(HTTPStatus.NOT_FOUND, f"No route for GET {self.path}".encode(), "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != "/invocations":
            self.rfile.read(length)
            self.reply(HTTPStatus.NOT_FOUND, f"No route for POST {self.path}".encode(), "text/plain")
            return
        if length > MAX_CONTENT_LENGTH:
            self.close_connection = True  # the body stays unread
            self.reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"Payload exceeds 6 MB", "text/plain")
            return
        body = self.rfile.read(length)
        if not body.strip():
            self.reply(HTTPStatus.NO_CONTENT, b"", "text/plain")
            return
        content_type = media_type(self.headers.get("Content-Type"), "text/csv")
        accept = media_type(self.headers.get("Accept"), "text/csv")
        try:
            self.reply(HTTPStatus.OK, self.server.model.invoke(body, content_type, accept), accept)
        except RequestError as error:
            log.warning("%s %s", int(error.status), error.message)
            self.reply(error.status, error.message.encode(), "text/plain")
        except Exception as exc:  # the model failed on this input: answer it, stay up
            log.exception("prediction failed")
            self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, f"Prediction failed: {exc}".encode(), "text/plain")

    def reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log: requests are counted in thousands; errors are logged where they happen."""


class InferenceServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, model: Model) -> None:
        super().__init__((HOST, port), InferenceHandler)
        self.model = model


def exit_with_parent() -> None:
    # Started by a supervisor (the local cloud): never outlive it, even if it is killed.
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def worker_count() -> int:
    value = os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "")
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SAGEMAKER_MODEL_SERVER_WORKERS must be a positive integer, not {value!r}")
    return int(value)


def serve_workers(server: InferenceServer, workers: int) -> int:
    """Fork the workers, which share the server's listening socket, and wait: when one dies, stop
    the others and exit, so the supervisor replaces the whole server as SageMaker replaces an
    instance. SIGTERM stops them all."""
    children = []
    for _ in range(workers):
        child = os.fork()
        if child == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            threading.Thread(target=exit_with_parent, daemon=True).start()
            server.serve_forever()
            os._exit(0)
        children.append(child)
    server.socket.close()  # the workers hold it

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=exit_with_parent, daemon=True).start()
    code = 0
    try:
        _, status = os.wait()
        code = os.waitstatus_to_exitcode(status)
        log.error("a model server worker exited with code %d; stopping the others", code)
    finally:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass  # the one that exited
        for child in children:
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass
    return code or 1


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    model_dir = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "model"
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    try:
        workers = worker_count()
        model = Model(load_booster(model_dir))
    except Exception as exc:
        log.error("cannot load model: %s", exc)
        return 1
    try:
        server = InferenceServer(port, model)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", HOST, port, exc.strerror)
        return 1
    log.info(
        "model with %d features loaded from %s; serving on %s:%d with %d workers",
        model.num_features, model_dir, HOST, port, workers,
    )
    # The model is loaded before the fork (no thread runs yet), so each worker has it at once.
    return serve_workers(server, workers)


if __name__ == "__main__":
    sys.exit(main())
