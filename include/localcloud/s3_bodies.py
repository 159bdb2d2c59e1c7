"""S3 object bodies moved in chunks, never whole: moto 5.2.5 keeps each body in a spooled
temporary file (`FakeKey._value_buffer`, on disk past a few MB), but reads a PutObject's or
UploadPart's body whole into memory (`request.data`) before it stores it, and reads a body whole to
answer a GET (every ranged GET of a download included) and to complete a multipart upload.

Patched here, as narrowly as possible: the body of a PutObject or UploadPart is copied from the
request into a spooled file of its own in chunks (`UploadedBody`), which the new FakeKey adopts;
while moto builds a GetObject answer, `key.value` is a `BodyView`, a window on the buffer that the
WSGI server reads in chunks (moto's range handling slices it into a smaller view); a completed
multipart upload's parts are copied into the new object's buffer part by part. Every other use of
`key.value` still gets bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import moto.s3.models as models
from moto.s3.exceptions import S3ClientError
from moto.s3.models import FakeKey, FakeMultipart
from moto.s3.responses import S3Response
from moto.settings import get_s3_default_key_buffer_size
from moto.utilities.utils import md5_hash
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.wrappers import Request

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
    """A body in a file of a snapshot's, named by its SHA-256, for FakeKey's value setter to copy in chunks."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return self.path.stat().st_size


class _SpooledBody:
    """A body copied chunk by chunk into a spooled file of its own, its SHA-256 computed as it goes:
    FakeKey's value setter adopts the file."""

    def __init__(self, size: int, spool_bytes: int) -> None:
        self.file = tempfile.SpooledTemporaryFile(spool_bytes)
        if size > spool_bytes:
            self.file.rollover()  # straight to disk: the spool would fill its memory before it rolls over
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def write(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)


class _Concatenation(_SpooledBody):
    """A completed multipart upload's body, copied part by part (moto disposes of the parts before
    it makes the object)."""

    def __init__(self, parts: list[FakeKey], spool_bytes: int) -> None:
        super().__init__(sum(part.contentsize for part in parts), spool_bytes)
        for part in parts:
            for chunk in BodyView(part):
                self.write(chunk)


class UploadedBody(_SpooledBody):
    """The body of a PutObject or UploadPart, copied from the request (an aws-chunked body decoded
    on the way, its trailing checksum put with the request's headers, where moto looks for it), its
    MD5 computed too: moto gets it instead of the bytes it would read whole. A body that is not what
    its headers announce is refused before moto acts on the request (moto answers the error)."""

    def __init__(self, request: Request) -> None:
        super().__init__(request.content_length or 0, get_s3_default_key_buffer_size())
        self.md5 = md5_hash()
        self.error: S3ClientError | None = None
        if _aws_chunked(request):
            self._copy_chunks(request)
        else:
            self._copy(request.stream, request.content_length)

    def write(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        super().write(chunk)

    def _copy(self, stream: IO[bytes], size: int | None) -> None:
        """`size` bytes of the stream, or all of it when None."""
        left = sys.maxsize if size is None else size
        while left > 0 and (chunk := stream.read(min(CHUNK_BYTES, left))):
            self.write(chunk)
            left -= len(chunk)

    def _copy_chunks(self, request: Request) -> None:
        r"""aws-chunked: "<hex size>[;chunk-signature=...]\r\n<data>\r\n" until a chunk of size 0, then
        "<name>:<value>\r\n" trailers and an empty line."""
        stream = request.stream
        while True:
            line = stream.readline(1024)
            try:
                size = int(line.split(b";")[0], 16)
            except ValueError:
                self.error = _incomplete_body(f"an aws-chunked chunk starts with {line[:40]!r}, not its size")
                return
            if size == 0:
                break
            self._copy(stream, size)
            stream.read(2)  # the CRLF after the chunk's data
        while line := stream.readline(1024).strip():
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower().startswith("x-amz-checksum-"):
                request.environ["HTTP_" + name.upper().replace("-", "_")] = value.strip()
        decoded = request.headers.get("x-amz-decoded-content-length")
        if decoded != str(self.size):
            self.error = _incomplete_body(f"it decodes to {self.size} bytes, x-amz-decoded-content-length "
                                          f"says {decoded}")
        elif (checksum := _checksum_header(request)) and checksum not in request.headers:
            self.error = _incomplete_body(f"its trailer has no {checksum}")


def _incomplete_body(why: str) -> S3ClientError:
    return S3ClientError("IncompleteBody", f"The request body is not what its headers announce: {why}.")


def _aws_chunked(request: Request) -> bool:
    return request.headers.get("x-amz-content-sha256", "").startswith("STREAMING-")


def _checksum_header(request: Request) -> str | None:
    """The header (or trailer) of the checksum the client names, if it names one."""
    algorithm = request.headers.get("x-amz-sdk-checksum-algorithm")
    return f"x-amz-checksum-{algorithm.lower()}" if algorithm else None


def _streams_upload(request: Request) -> bool:
    """Whether a key's request is a PutObject or an UploadPart, whose body moto only stores. One that
    names a checksum algorithm but sends no checksum is left to moto, which computes it over the
    whole body."""
    if request.method != "PUT" or "x-amz-copy-source" in request.headers:
        return False
    if set(request.args) - {"uploadId", "partNumber"} or ("uploadId" in request.args) != ("partNumber" in request.args):
        return False
    checksum = _checksum_header(request)
    return checksum is None or checksum in request.headers or (_aws_chunked(request) and "x-amz-trailer" in request.headers)


def _get_value(key: FakeKey) -> bytes | BodyView:
    if getattr(_answering_get, "active", False):
        return BodyView(key)
    return _value.fget(key)


def _set_value(key: FakeKey, value: Any) -> None:
    """The body, and `key.body_sha256`, its SHA-256 in hex, by which snapshots store it."""
    if isinstance(value, FileBody):
        with value.path.open("rb") as source:
            fill_body(key, source)
        key.body_sha256 = value.path.name
        return
    if isinstance(value, _SpooledBody):
        key._value_buffer.close()
        key._value_buffer = value.file
        key.contentsize = value.size
        key.body_sha256 = value.sha256.hexdigest()
        if isinstance(value, UploadedBody):
            key._etag = value.md5.hexdigest()
        return
    _value.fset(key, value)
    digest = hashlib.sha256()
    key._value_buffer.seek(0)  # the key has no lock yet when moto makes it
    while chunk := key._value_buffer.read(CHUNK_BYTES):
        digest.update(chunk)
    key.body_sha256 = digest.hexdigest()


_original_key_response = S3Response.key_response
_original_act_on_key = S3Response._key_response
_original_handle_encoded_body = S3Response._handle_encoded_body
_original_handle_v4_chunk_signatures = S3Response._handle_v4_chunk_signatures
_original_get_object = S3Response.get_object
_original_complete = FakeMultipart.complete


def _key_response(self: S3Response, request: Request, full_url: str, headers: Any) -> Any:
    if _streams_upload(request):
        # What moto's setup_class reads as the body, form and files, instead of the request's stream.
        request._cached_data = UploadedBody(request)  # type: ignore[assignment]
        request.__dict__["form"] = request.__dict__["files"] = ImmutableMultiDict()
    return _original_key_response(self, request, full_url, headers)


def _act_on_key(self: S3Response, request: Request, full_url: str) -> Any:
    """moto's action on a key's request, where an S3ClientError becomes moto's error answer."""
    if isinstance(self.body, UploadedBody) and self.body.error is not None:
        raise self.body.error
    return _original_act_on_key(self, request, full_url)


def _handle_encoded_body(self: S3Response, body: Any) -> Any:
    return body if isinstance(body, UploadedBody) else _original_handle_encoded_body(self, body)


def _handle_v4_chunk_signatures(self: S3Response, body: Any, content_length: int) -> Any:
    if isinstance(body, UploadedBody):
        return body
    return _original_handle_v4_chunk_signatures(self, body, content_length)


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


def _part_checksum(part: FakeKey, algorithm: str) -> bytes:
    """moto's compute_checksum(part.value, algorithm, encode_base64=False), the part read in chunks
    (but for CRC32C and CRC64NVME with their optional libraries, which moto calls on the whole part)."""
    if _crc32_computes(algorithm):
        crc = 0
        for chunk in BodyView(part):
            crc = binascii.crc32(chunk, crc)
        return crc.to_bytes(4, "big")
    if algorithm in ("CRC32C", "CRC64NVME"):
        return models.compute_checksum(part.value, algorithm, encode_base64=False)
    digest = hashlib.sha1() if algorithm == "SHA1" else hashlib.sha256()  # compute_checksum's others
    for chunk in BodyView(part):
        digest.update(chunk)
    return digest.digest()


def _complete(self: FakeMultipart, body: Iterator[tuple[int, str]]) -> tuple[Any, str, Any]:
    """moto's FakeMultipart.complete with the same checks, etag and checksums, giving the parts
    copied one by one instead of their concatenation in memory. A full-object checksum is computed
    as the parts are copied when it is a CRC32; others keep moto's own way. A composite checksum's
    part checksums are computed in chunks."""
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
        elif algorithm:  # composite: the checksum of the parts' checksums (builder.addPart's way)
            builder.checksum.extend(_part_checksum(part, builder.checksum_algorithm))
            builder.part_count += 1
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
    S3Response.key_response = _key_response  # type: ignore[method-assign]
    S3Response._key_response = _act_on_key  # type: ignore[method-assign]
    S3Response._handle_encoded_body = _handle_encoded_body  # type: ignore[method-assign]
    S3Response._handle_v4_chunk_signatures = _handle_v4_chunk_signatures  # type: ignore[method-assign]
    S3Response.get_object = _get_object  # type: ignore[method-assign]
    FakeMultipart.complete = _complete  # type: ignore[method-assign]
