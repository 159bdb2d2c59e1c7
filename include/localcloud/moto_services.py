"""S3, Glue, STS, IAM, CloudWatch Logs and CloudFormation, served by moto behind the local cloud's port, with
moto's in-memory state snapshotted to the state folder so it survives a restart.

The snapshot is a pickle of moto's backends, except for the bodies of S3 objects: each is a file
of its own under s3-bodies/, named by its SHA-256, written the first time a snapshot meets the
object. moto never changes an object's body (an overwrite is a new object), so a snapshot writes
only what is new since the last one, however much S3 holds."""

from __future__ import annotations

import copyreg
import hashlib
import os
import pickle
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from moto.backends import get_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.models import FakeKey

from include.localcloud import (
    moto_adaptations,  # noqa: F401 - applied when imported
    s3_bodies,
)
from include.localcloud.periodic import PeriodicWork

s3_bodies.install()

PERSISTED_SERVICES = ("s3", "glue", "sts", "iam", "logs", "cloudformation")
SNAPSHOT_INTERVAL_SECONDS = 2.0


def write_durably(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file through a synced temporary one, then rename it: a crash leaves the old file or
    the new one, never half of one."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


@dataclass(frozen=True)
class StoredBody:
    """An S3 object's body in a snapshot: the name of its file."""

    digest: str

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return stored_body, (self.digest,)


def stored_body(digest: str) -> bytes:
    """What a snapshot calls to get a body back; its unpickler puts the body store's load in place."""
    raise pickle.UnpicklingError(f"S3 body {digest}: only the snapshot's unpickler can load it")


class BodyStore:
    """S3 object bodies as files named by their SHA-256, each written once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._digests: dict[int, tuple[weakref.ref[FakeKey], str]] = {}  # id(object) -> (object, digest)
        self._referenced: set[str] = set()

    def store(self, key: FakeKey) -> StoredBody:
        known = self._digests.get(id(key))
        if known is not None and known[0]() is key:
            digest = known[1]
        else:
            digest = hashlib.sha256()
            for chunk in s3_bodies.BodyView(key):
                digest.update(chunk)
            digest = digest.hexdigest()
            path = self.folder / digest
            if not path.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                write_durably(path, lambda handle: s3_bodies.copy_body(key, handle))
            self._digests[id(key)] = (weakref.ref(key), digest)
        self._referenced.add(digest)
        return StoredBody(digest)

    def begin_snapshot(self) -> None:
        self._referenced = set()

    def load(self, digest: str) -> s3_bodies.FileBody:
        return s3_bodies.FileBody(self.folder / digest)

    def remove_unreferenced(self) -> None:
        """Delete the bodies the snapshot just written does not name; forget objects that are gone."""
        if self.folder.exists():
            for path in self.folder.iterdir():
                if path.name not in self._referenced:
                    path.unlink()
        self._digests = {ident: entry for ident, entry in self._digests.items() if entry[0]() is not None}


class _SnapshotPickler(pickle.Pickler):
    def __init__(self, file: IO[bytes], bodies: BodyStore) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.bodies = bodies

    def reducer_override(self, obj: Any) -> Any:
        # FakeKey's own __getstate__, with the body stored apart. A deleted object's body is
        # closed (ValueError when read, also while this snapshot runs): moto's own pickling takes it.
        if type(obj) is FakeKey and not obj.disposed:
            try:
                body = self.bodies.store(obj)
            except ValueError:
                return NotImplemented
            state = {name: value for name, value in obj.__dict__.items() if name not in ("_value_buffer", "lock")}
            state["value"] = body
            return copyreg.__newobj__, (FakeKey,), state
        return NotImplemented


class _SnapshotUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], bodies: BodyStore) -> None:
        super().__init__(file)
        self.bodies = bodies

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == (__name__, stored_body.__name__):
            return self.bodies.load
        return super().find_class(module, name)


class MotoServices:
    """The WSGI application of moto's server, plus durable snapshots of its backends."""

    def __init__(self, snapshot_path: Path) -> None:
        self.app = DomainDispatcherApplication(create_backend_app)
        self.snapshot_path = snapshot_path
        self.bodies = BodyStore(snapshot_path.parent / "s3-bodies")
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
            saved: dict[str, Any] = _SnapshotUnpickler(handle, self.bodies).load()
        for name, state in saved.items():
            backend_dict = get_backend(name)  # type: ignore[call-overload]
            backend_dict.clear()
            backend_dict.update(state)

    def save(self) -> None:
        with self._save_lock:
            self._dirty.clear()
            state = {name: dict(get_backend(name)) for name in PERSISTED_SERVICES}  # type: ignore[call-overload]
            self.bodies.begin_snapshot()
            write_durably(self.snapshot_path, lambda handle: _SnapshotPickler(handle, self.bodies).dump(state))
            self.bodies.remove_unreferenced()

    def start(self) -> None:
        self._snapshots.start()

    def stop(self) -> None:
        self._snapshots.stop()
        self.save()

    def _save_if_dirty(self) -> None:
        if self._dirty.is_set():
            self.save()
