"""The AWS wire protocols the local cloud speaks: JSON 1.1 (SageMaker, Athena) and REST-JSON
(Feature Store runtime, SageMaker runtime), with requests validated against botocore's models."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import botocore.session
from botocore import xform_name
from botocore.model import OperationModel, ServiceModel, Shape
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from include.localcloud.server import LocalCloud

MAX_JSON_BODY = 8 * 1024 * 1024  # SageMaker/Athena requests are small; 8 MiB is generous.


class AwsError(Exception):
    """An error answered the way AWS answers it: an error code, a message and an HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields or {}  # the error shape's other members, e.g. Athena's AthenaErrorCode


def not_found(message: str = "Requested resource not found.") -> AwsError:
    # SageMaker answers a missing job, model or endpoint with ValidationException, and the
    # provider's operators rely on that to tell "not found" from other failures.
    return AwsError("ValidationException", message)


@dataclass(frozen=True)
class RequestContext:
    """Who is calling and where: the region comes from the request's SigV4 credential scope."""

    cloud: LocalCloud
    region: str
    account_id: str
    request_id: str

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account_id}:{resource}"


@cache
def service_model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


@cache
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # a Java-only construct (e.g. \p{...}); AWS would check it, we cannot
        return None


def _member_path(parent: str, name: str) -> str:
    name = name[:1].lower() + name[1:]
    return f"{parent}.{name}" if parent else name


def validate(shape: Shape, value: Any, path: str = "") -> list[str]:
    """Check a decoded JSON value against a botocore shape the way AWS does: required members,
    types, lengths and ranges, patterns and enums. Returns AWS-style constraint messages."""
    errors: list[str] = []
    where = path or shape.name

    def fail(constraint: str) -> None:
        # Rendered only on failure: a valid multi-megabyte blob must not be dumped per request.
        shown = json.dumps(value, default=str)[:100] if not isinstance(value, str) else value[:100]
        errors.append(f"Value '{shown}' at '{where}' failed to satisfy constraint: {constraint}")

    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            fail("Member must be a structure")
            return errors
        for name in shape.required_members:
            if value.get(name) is None:
                errors.append(
                    f"Value null at '{_member_path(path, name)}' failed to satisfy constraint: "
                    "Member must not be null"
                )
        for name, member in shape.members.items():
            if value.get(name) is not None:
                errors += validate(member, value[name], _member_path(path, name))
        return errors
    if kind == "list":
        if not isinstance(value, list):
            fail("Member must be a list")
            return errors
        _check_length(shape, len(value), fail)
        for i, item in enumerate(value):
            errors += validate(shape.member, item, f"{where}.{i + 1}.member")
        return errors
    if kind == "map":
        if not isinstance(value, dict):
            fail("Member must be a map")
            return errors
        _check_length(shape, len(value), fail)
        for key, item in value.items():
            errors += validate(shape.key, key, f"{where}.key")
            errors += validate(shape.value, item, f"{where}.{key}.member")
        return errors
    if kind == "string":
        if not isinstance(value, str):
            fail("Member must be a string")
            return errors
        _check_length(shape, len(value), fail)
        if shape.enum and value not in shape.enum:
            fail(f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        pattern = shape.metadata.get("pattern")
        # AWS matches the whole value (Java matches()), even where the pattern has no $.
        if pattern and (regex := _compiled(pattern)) is not None and not regex.fullmatch(value):
            fail(f"Member must satisfy regular expression pattern: {pattern}")
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            fail("Member must be an integer")
        else:
            _check_range(shape, value, fail)
    elif kind in ("float", "double"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            fail("Member must be a number")
        else:
            _check_range(shape, value, fail)
    elif kind == "boolean":
        if not isinstance(value, bool):
            fail("Member must be a boolean")
    elif kind == "timestamp":
        if not isinstance(value, (int, float, str)) or isinstance(value, bool):
            fail("Member must be a timestamp")
    elif kind == "blob" and not isinstance(value, (str, bytes)):
        fail("Member must be a blob")
    return errors


def _check_length(shape: Shape, length: int, fail: Callable[[str], None]) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and length < low:
        fail(f"Member must have length greater than or equal to {low}")
    if high is not None and length > high:
        fail(f"Member must have length less than or equal to {high}")


def _check_range(shape: Shape, number: float, fail: Callable[[str], None]) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and number < low:
        fail(f"Member must have value greater than or equal to {low}")
    if high is not None and number > high:
        fail(f"Member must have value less than or equal to {high}")


Check = Callable[[Any], bool]
# Valid strings remembered per string shape, so a value seen before is not matched again: at most
# 4096 of at most 64 characters, a few hundred kB a shape.
VALID_STRINGS_KEPT = 4096
VALID_STRING_KEPT_CHARS = 64


@cache
def is_valid(shape: Shape) -> Check:
    """A compiled form of `validate(shape, value) == []`, built once per shape: the check every
    request pays. `validate` runs only on failure, to say what is wrong."""
    kind = shape.type_name
    if kind == "structure":
        required = tuple(shape.required_members)
        members: dict[str, Check] = {}  # filled on first use: shapes can be recursive

        def structure(value: Any) -> bool:
            if not isinstance(value, dict):
                return False
            if not members:
                members.update({name: is_valid(member) for name, member in shape.members.items()})
            for name in required:
                if value.get(name) is None:
                    return False
            for name, item in value.items():
                check = members.get(name)
                if check is not None and item is not None and not check(item):
                    return False
            return True

        return structure
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    if kind == "list":
        def list_(value: Any) -> bool:
            check = is_valid(shape.member)
            return isinstance(value, list) and low <= len(value) <= high and all(check(item) for item in value)

        return list_
    if kind == "map":
        def map_(value: Any) -> bool:
            key, item = is_valid(shape.key), is_valid(shape.value)
            return (isinstance(value, dict) and low <= len(value) <= high
                    and all(key(k) and item(v) for k, v in value.items()))

        return map_
    if kind == "string":
        enum = frozenset(shape.enum)
        pattern = shape.metadata.get("pattern")
        regex = _compiled(pattern) if pattern else None

        valid: set[str] = set()  # short values found valid: feature names and categories come again and again

        def string(value: Any) -> bool:
            if not isinstance(value, str):
                return False
            if value in valid:
                return True
            ok = low <= len(value) <= high and (not enum or value in enum) and (
                regex is None or regex.fullmatch(value) is not None)
            if ok and len(value) <= VALID_STRING_KEPT_CHARS and len(valid) < VALID_STRINGS_KEPT:
                valid.add(value)
            return ok

        return string
    if kind in ("integer", "long"):
        return lambda value: isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if kind in ("float", "double"):
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if kind == "boolean":
        return lambda value: isinstance(value, bool)
    if kind == "timestamp":
        return lambda value: isinstance(value, (int, float, str)) and not isinstance(value, bool)
    if kind == "blob":
        return lambda value: isinstance(value, (str, bytes))
    return lambda value: True


def raise_if_invalid(shape: Shape | None, params: dict[str, Any], code: str) -> None:
    if shape is None or is_valid(shape)(params):
        return
    errors = validate(shape, params)
    if errors:
        count = len(errors)
        noun = "error" if count == 1 else "errors"
        raise AwsError(code, f"{count} validation {noun} detected: " + "; ".join(errors))


def to_json(value: Any) -> bytes:
    def default(obj: Any) -> Any:
        if isinstance(obj, dt.datetime):
            return obj.timestamp()
        if isinstance(obj, bytes):
            return base64.b64encode(obj).decode()
        raise TypeError(f"cannot serialize {type(obj).__name__}")

    return json.dumps(value, default=default, separators=(",", ":")).encode()


def read_body(request: Request, limit: int = MAX_JSON_BODY) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise AwsError("RequestEntityTooLarge", f"Request body of {length} bytes exceeds {limit}.", 413)
    body = request.get_data(cache=True)
    if len(body) > limit:
        raise AwsError("RequestEntityTooLarge", f"Request body exceeds {limit} bytes.", 413)
    return body


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AwsError("SerializationException", f"Request body is not valid JSON: {exc}") from exc
    except RecursionError:  # deeper than the interpreter's stack: AWS's parsers refuse such nesting too
        raise AwsError("SerializationException", "Request body is not valid JSON: nested too deeply.") from None
    if not isinstance(value, dict):
        raise AwsError("SerializationException", "Request body must be a JSON object.")
    return value


def new_request_id() -> str:
    return str(uuid.uuid4())


class JsonService:
    """Base of a service spoken in JSON 1.1 (`X-Amz-Target: Prefix.Operation`). Subclasses
    implement operations as snake_case methods taking (params, ctx) and returning a dict."""

    service_name: str = ""
    validation_error: str = "ValidationException"

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.model = service_model(self.service_name)
        self.target_prefix = self.model.metadata["targetPrefix"] + "."

    def matches(self, request: Request, signing_service: str | None) -> bool:
        return request.headers.get("X-Amz-Target", "").startswith(self.target_prefix)

    def start(self) -> None:
        """Resume background work after a restart (jobs, servers)."""

    def stop(self) -> None:
        """Stop background work; state stays on disk."""

    def handle(self, request: Request, ctx: RequestContext) -> Response:
        operation = request.headers["X-Amz-Target"][len(self.target_prefix):]
        if operation not in self.model.operation_names:
            raise AwsError("UnknownOperationException", f"Unknown operation {operation}.")
        handler = getattr(self, xform_name(operation), None)
        if handler is None:
            raise AwsError(
                "UnknownOperationException",
                f"{operation} is not supported by the local cloud.",
            )
        params = parse_json_object(read_body(request))
        raise_if_invalid(self.model.operation_model(operation).input_shape, params, self.validation_error)
        result = handler(params, ctx) or {}
        return Response(to_json(result), 200, content_type="application/x-amz-json-1.1")


class RestJsonService:
    """Base of a REST-JSON service: operations routed by HTTP method and URI template from
    botocore's model, inputs read from the path, query string, headers and body."""

    service_name: str = ""
    validation_error: str = "ValidationError"

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.model = service_model(self.service_name)
        self.routes: list[tuple[str, re.Pattern[str], OperationModel]] = []
        for name in self.model.operation_names:
            if getattr(self, xform_name(name), None) is None:
                continue
            operation = self.model.operation_model(name)
            uri = operation.http["requestUri"].split("?")[0]
            regex = re.sub(r"\{(\w+)\+?\}", r"(?P<\1>[^/]+)", uri)
            self.routes.append((operation.http["method"], re.compile(f"^{regex}$"), operation))

    def start(self) -> None:
        """Resume background work after a restart."""

    def stop(self) -> None:
        """Stop background work; state stays on disk."""

    def route(self, request: Request) -> tuple[OperationModel, dict[str, str]] | None:
        # The raw path: a percent-encoded "/" inside a label (an ARN as a name) must not split it.
        path = request.environ.get("REQUEST_URI", request.path).split("?", 1)[0]
        for method, regex, operation in self.routes:
            if request.method == method and (found := regex.match(path)):
                return operation, {k: unquote(v) for k, v in found.groupdict().items()}
        return None

    def matches(self, request: Request, signing_service: str | None) -> bool:
        return signing_service == self.model.signing_name and self.route(request) is not None

    def handle(self, request: Request, ctx: RequestContext) -> Response:
        operation, path_params = self.route(request)  # type: ignore[misc]
        shape = operation.input_shape
        payload_name = shape.serialization.get("payload") if shape else None
        body = read_body(request, self.max_body(operation))
        params: dict[str, Any] = {}
        if shape is not None:
            if payload_name is None:
                params.update(parse_json_object(body))
            for name, member in shape.members.items():
                location = member.serialization.get("location")
                wire = member.serialization.get("name", name)
                if location == "uri":
                    params[name] = path_params.get(wire)
                elif location == "querystring":
                    values = request.args.getlist(wire)
                    if values:
                        params[name] = values if member.type_name == "list" else _scalar(member, values[0])
                elif location == "header" and wire in request.headers:
                    params[name] = _scalar(member, request.headers[wire])
            if payload_name is not None:
                params[payload_name] = body
        raise_if_invalid(shape, params, self.validation_error)
        result = getattr(self, xform_name(operation.name))(params, ctx) or {}
        return self.render(operation, result)

    def max_body(self, operation: OperationModel) -> int:
        return MAX_JSON_BODY

    @staticmethod
    def render(operation: OperationModel, result: dict[str, Any]) -> Response:
        shape = operation.output_shape
        headers: dict[str, str] = {}
        payload_name = shape.serialization.get("payload") if shape else None
        body: dict[str, Any] = {}
        for name, value in result.items():
            member = shape.members.get(name) if shape else None
            location = member.serialization.get("location") if member else None
            if location == "header":
                headers[member.serialization.get("name", name)] = str(value)  # type: ignore[union-attr]
            elif name != payload_name:
                body[name] = value
        if payload_name is not None:
            payload = result.get(payload_name, b"")
            return Response(payload, 200, headers=headers)
        return Response(to_json(body), 200, headers=headers, content_type="application/json")


def _scalar(shape: Shape, text: str) -> Any:
    """A query-string or header value as its shape's type; left as text when it doesn't parse,
    so validation names the member."""
    try:
        if shape.type_name in ("integer", "long"):
            return int(text)
        if shape.type_name in ("float", "double"):
            return float(text)
    except ValueError:
        return text
    if shape.type_name == "boolean" and text in ("true", "false"):
        return text == "true"
    return text


def error_response(error: AwsError, request_id: str, rest: bool) -> Response:
    body = {"__type": error.code, "message": error.message, **error.fields}
    if rest:
        body = {"message": error.message, **error.fields}
    headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error.code}
    content_type = "application/json" if rest else "application/x-amz-json-1.1"
    return Response(to_json(body), error.status, headers=headers, content_type=content_type)
