"""S3 object bodies moved in chunks, never whole: moto 5.2.5 keeps each body in a spooled
temporary file (`FakeKey._value_buffer`, on disk past a few MB), but reads it whole into memory
to answer a GET (every ranged GET of a download included) and to complete a multipart upload.

Patched here, as narrowly as possible: while moto builds a GetObject answer, `key.value` is a
`BodyView`, a window on the buffer that the WSGI server reads in chunks (moto's range handling
slices it into a smaller view); a completed multipart upload's parts are copied into the new
object's buffer part by part. Every other use of `key.value` still gets bytes."""

from __future__ import annotations

import base64
import binascii
import importlib.util
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import moto.s3.models as models
from moto.s3.models import FakeKey, FakeMultipart
from moto.s3.responses import S3Response
from moto.utilities.utils import md5_hash

CHUNK_BYTES = 1024 * 1024
_answering_get = threading.local()
_value = FakeKey.value


class BodyView:
    """Bytes [start, stop) of a FakeKey's body, read from its buffer in chunks when iterated."""

    def __init__(self, key: FakeKey, start: int = 0, stop: int | None = None) -> None:
        self.key = key
        self.start = start
        self.stop = key.contentsize if stop is None else stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, window: slice) -> BodyView:
        start, stop, step = window.indices(len(self))
        if step != 1:
            raise ValueError("a body view slices with step 1 only")
        return BodyView(self.key, self.start + start, self.start + max(stop, start))

    def __iter__(self) -> Iterator[bytes]:
        position = self.start
        while position < self.stop:
            with self.key.lock:
                self.key._value_buffer.seek(position)
                chunk = self.key._value_buffer.read(min(CHUNK_BYTES, self.stop - position))
            if not chunk:
                return
            position += len(chunk)
            yield chunk


def copy_body(key: FakeKey, target: IO[bytes]) -> None:
    """Write a FakeKey's body to a file, chunk by chunk."""
    for chunk in BodyView(key):
        target.write(chunk)


def fill_body(key: FakeKey, source: IO[bytes]) -> None:
    """Replace a FakeKey's body by the content of a file, chunk by chunk (a key being restored: it has no lock yet)."""
    key._value_buffer.seek(0)
    key._value_buffer.truncate()
    size = 0
    while chunk := source.read(CHUNK_BYTES):
        key._value_buffer.write(chunk)
        size += len(chunk)
    key.contentsize = size


class FileBody:
    """A body in a file (a snapshot's), for FakeKey's value setter to copy in chunks."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return self.path.stat().st_size


class _Concatenation:
    """A completed multipart upload's body, copied part by part into a spooled file of its own
    (moto disposes of the parts before it makes the object): FakeKey's value setter adopts it."""

    def __init__(self, parts: list[FakeKey], spool_bytes: int) -> None:
        self.file = tempfile.SpooledTemporaryFile(spool_bytes)
        for part in parts:
            copy_body(part, self.file)
        self.size = self.file.tell()

    def __len__(self) -> int:
        return self.size


def _get_value(key: FakeKey) -> bytes | BodyView:
    if getattr(_answering_get, "active", False):
        return BodyView(key)
    return _value.fget(key)


def _set_value(key: FakeKey, value: Any) -> None:
    if isinstance(value, FileBody):
        with value.path.open("rb") as source:
            fill_body(key, source)
        return
    if isinstance(value, _Concatenation):
        key._value_buffer.close()
        key._value_buffer = value.file
        key.contentsize = value.size
        return
    _value.fset(key, value)


_original_get_object = S3Response.get_object
_original_complete = FakeMultipart.complete


def _get_object(self: S3Response) -> Any:
    _answering_get.active = True
    try:
        return _original_get_object(self)
    finally:
        _answering_get.active = False


def _crc32_computes(algorithm: str) -> bool:
    """Whether moto's compute_checksum gives binascii.crc32 for the algorithm: always for CRC32,
    and for CRC32C and CRC64NVME when their optional libraries are missing."""
    library = {"CRC32": None, "CRC32C": "crc32c", "CRC64NVME": "awscrt"}.get(algorithm, "")
    return library is None or (bool(library) and importlib.util.find_spec(library) is None)


def _complete(self: FakeMultipart, body: Iterator[tuple[int, str]]) -> tuple[Any, str, Any]:
    """moto's FakeMultipart.complete with the same checks, etag and checksums, giving the parts
    copied one by one instead of their concatenation in memory. A full-object checksum is computed
    as the parts are copied when it is a CRC32; others keep moto's own way."""
    algorithm = self.metadata.get("x-amz-checksum-algorithm")
    builder = models.MultipartChecksumBuilder(algorithm, self.metadata.get("x-amz-checksum-type"))
    full_object = bool(algorithm) and builder.checksum_type != "COMPOSITE"
    if full_object and not _crc32_computes(builder.checksum_algorithm):
        return _original_complete(self, body)
    parts: list[FakeKey] = []
    md5s = bytearray()
    crc = 0
    for number, etag in body:
        part = self.parts.get(number)
        if part is None or part.etag.replace('"', "") != etag.replace('"', ""):
            raise models.InvalidPart()
        if parts and parts[-1].contentsize < models.S3_UPLOAD_PART_MIN_SIZE:
            raise models.EntityTooSmall()
        md5s.extend(bytes.fromhex(part.etag.replace('"', "")))
        if full_object:
            for chunk in BodyView(part):
                crc = binascii.crc32(chunk, crc)
        elif algorithm:  # without one, moto computes a checksum it never shows
            builder.addPart(part.value)  # one part at a time
        parts.append(part)
    if not parts:
        raise models.MalformedXML()
    if full_object:
        checksum = (builder.checksum_type, base64.b64encode(crc.to_bytes(4, "big")).decode(), 1)
    else:
        checksum = builder.build() if algorithm else None
    return (
        _Concatenation(parts, parts[0]._max_buffer_size),
        f"{md5_hash(bytes(md5s)).hexdigest()}-{len(parts)}",
        checksum,
    )


def install() -> None:
    """Patch moto's S3 once (idempotent)."""
    if isinstance(FakeKey.__dict__["value"], property) and FakeKey.__dict__["value"].fget is _get_value:
        return
    FakeKey.value = property(_get_value, _set_value)  # type: ignore[assignment]
    S3Response.get_object = _get_object  # type: ignore[method-assign]
    FakeMultipart.complete = _complete  # type: ignore[method-assign]
