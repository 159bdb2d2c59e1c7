"""S3, Glue, STS, IAM and CloudWatch Logs, served by moto behind the local cloud's port, with
moto's in-memory state snapshotted to the state folder so it survives a restart."""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from moto.backends import get_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from include.localcloud.periodic import PeriodicWork

PERSISTED_SERVICES = ("s3", "glue", "sts", "iam", "logs")
SNAPSHOT_INTERVAL_SECONDS = 2.0


class MotoServices:
    """The WSGI application of moto's server, plus durable snapshots of its backends."""

    def __init__(self, snapshot_path: Path) -> None:
        self.app = DomainDispatcherApplication(create_backend_app)
        self.snapshot_path = snapshot_path
        self._dirty = threading.Event()
        self._snapshots = PeriodicWork(self._save_if_dirty, SNAPSHOT_INTERVAL_SECONDS, "moto-snapshots")
        self._save_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            self._dirty.set()
        return self.app(environ, start_response)

    def mark_dirty(self) -> None:
        self._dirty.set()

    def restore(self) -> None:
        if not self.snapshot_path.exists():
            return
        with self.snapshot_path.open("rb") as handle:
            saved: dict[str, Any] = pickle.load(handle)
        for name, state in saved.items():
            backend_dict = get_backend(name)  # type: ignore[call-overload]
            backend_dict.clear()
            backend_dict.update(state)

    def save(self) -> None:
        with self._save_lock:
            self._dirty.clear()
            state = {name: dict(get_backend(name)) for name in PERSISTED_SERVICES}  # type: ignore[call-overload]
            temporary = self.snapshot_path.with_suffix(".tmp")
            with temporary.open("wb") as handle:
                pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(self.snapshot_path)

    def start(self) -> None:
        self._snapshots.start()

    def stop(self) -> None:
        self._snapshots.stop()
        self.save()

    def _save_if_dirty(self) -> None:
        if self._dirty.is_set():
            self.save()
