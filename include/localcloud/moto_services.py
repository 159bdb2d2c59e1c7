"""S3, Glue, STS, IAM, CloudWatch Logs and CloudFormation, served by moto behind the local cloud's port, with
moto's in-memory state snapshotted to the state folder so it survives a restart.

The snapshot is a pickle of moto's backends, except for the bodies of S3 objects: each is a file
of its own under s3-bodies/, named by its SHA-256 (computed when the body is stored, see
s3_bodies), written the first time a snapshot meets the object. moto never changes an object's
body (an overwrite is a new object), so a snapshot writes only what is new since the last one,
however much S3 holds.

A snapshot pickles moto's state while no request changes it (pickling walks moto's dicts, and one
that a request adds to meanwhile fails it): moto's requests share a lock that the snapshot takes
alone, only for as long as it pickles the state into memory; the new bodies are written after."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
        self._on_disk = {path.name for path in folder.iterdir()} if folder.exists() else set()
        self._referenced: set[str] = set()
        self._new: dict[str, FakeKey] = {}  # digest -> an object with that body, not on disk yet

    def store(self, key: FakeKey) -> StoredBody:
        """The body as the snapshot being pickled names it; write_new() writes it if it is new."""
        digest: str = key.body_sha256
        if digest not in self._on_disk:
            self._new[digest] = key
        self._referenced.add(digest)
        return StoredBody(digest)

    def begin_snapshot(self) -> None:
        self._referenced = set()
        self._new = {}

    def write_new(self) -> None:
        """Write the bodies the snapshot just pickled names for the first time. ValueError: one of
        their objects was deleted since (moto closed its body)."""
        if self._new:
            self.folder.mkdir(parents=True, exist_ok=True)
        for digest, key in self._new.items():
            write_durably(self.folder / digest, lambda handle, key=key: s3_bodies.copy_body(key, handle))
            self._on_disk.add(digest)
        self._new = {}

    def load(self, digest: str) -> s3_bodies.FileBody:
        return s3_bodies.FileBody(self.folder / digest)

    def remove_unreferenced(self) -> None:
        """Delete the bodies the snapshot just written does not name."""
        if self.folder.exists():
            for path in self.folder.iterdir():
                if path.name not in self._referenced:
                    path.unlink()
        self._on_disk = set(self._referenced)


class RequestLock:
    """Shared by moto's requests, taken alone by a snapshot. A snapshot waiting for it holds new
    requests back, so that a busy server is snapshotted too."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._requests = 0
        self._snapshot = False  # waiting for the lock or holding it

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._changed:
            while self._snapshot:
                self._changed.wait()
            self._requests += 1
        try:
            yield
        finally:
            with self._changed:
                self._requests -= 1
                if not self._requests:
                    self._changed.notify_all()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._changed:
            self._snapshot = True
            while self._requests:
                self._changed.wait()
        try:
            yield
        finally:
            with self._changed:
                self._snapshot = False
                self._changed.notify_all()


class _SnapshotPickler(pickle.Pickler):
    def __init__(self, file: IO[bytes], bodies: BodyStore) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.bodies = bodies

    def reducer_override(self, obj: Any) -> Any:
        # FakeKey's own __getstate__, with the body stored apart. A deleted object's body is
        # closed: moto's own pickling takes it (as empty).
        if type(obj) is FakeKey and not obj.disposed and not obj._value_buffer.closed:
            state = {name: value for name, value in obj.__dict__.items()
                     if name not in ("_value_buffer", "lock", "body_sha256")}
            state["value"] = self.bodies.store(obj)
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
        self._requests = RequestLock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            self._dirty.set()
        # GETs too: moto makes an account's or a region's backend when a request first names it.
        # A GetObject's body streams after moto has answered, outside the lock.
        with self._requests.request():
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
            snapshot = io.BytesIO()
            with self._requests.snapshot():
                state = {name: dict(get_backend(name)) for name in PERSISTED_SERVICES}  # type: ignore[call-overload]
                self.bodies.begin_snapshot()
                _SnapshotPickler(snapshot, self.bodies).dump(state)
            try:
                self.bodies.write_new()
            except ValueError:  # an object deleted since: the next snapshot does not name it
                self._dirty.set()
                return
            write_durably(self.snapshot_path, lambda handle: handle.write(snapshot.getbuffer()))
            self.bodies.remove_unreferenced()

    def start(self) -> None:
        self._snapshots.start()

    def stop(self) -> None:
        self._snapshots.stop()
        self.save()

    def _save_if_dirty(self) -> None:
        if self._dirty.is_set():
            self.save()
