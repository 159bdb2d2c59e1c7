"""Who signed a request: the SigV4 signature (Authorization header or presigned query) parsed,
its access key found among moto's IAM users' keys and STS's temporary credentials, and the
signature checked with botocore's canonical request, as moto's own IAMRequest does."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.credentials import Credentials
from moto.iam.access_control import CreateAccessKeyFailure, create_access_key
from moto.sts.models import sts_backends
from werkzeug.wrappers import Request

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 +Credential=(?P<credential>[^,\s]+), *SignedHeaders=(?P<headers>[^,\s]+), *"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_CREDENTIAL = re.compile(r"^(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/(?P<service>[a-z0-9-]+)/aws4_request$")
_MAX_PRESIGNED_SECONDS = 7 * 24 * 3600


class SignatureError(Exception):
    """A request whose signature can't be accepted. `reason` picks the service's error code:
    malformed, unsupported, unknown_key, invalid_token, expired_token, mismatch, expired_request,
    missing, missing_content_sha256."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Signature:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    session_token: str | None
    presigned: bool


@dataclass(frozen=True)
class Principal:
    """A caller: `arn` as AWS names it in errors (user, or assumed-role session), `identity_arn`
    the user or role whose policies apply, `policies` their documents (moto's collect_policies)."""

    arn: str
    identity_arn: str
    secret_access_key: str
    session_token: str | None
    expiration: dt.datetime | None
    policies: tuple[Any, ...]


def header(request: Request, name: str) -> str | None:
    """A request header straight from the WSGI environment (werkzeug's Headers cost more, per call)."""
    key = name.upper().replace("-", "_")
    return request.environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key)


def parse_signature(request: Request) -> Signature | None:
    """The request's SigV4 signature; None when it carries none (an anonymous request)."""
    header_value = header(request, "Authorization")
    if header_value is not None:
        found = _AUTHORIZATION.match(header_value.strip())
        if found is None:
            raise SignatureError("malformed", _malformed_message(header_value))
        credential, signed, signature = found["credential"], found["headers"], found["signature"]
        amz_date = header(request, "X-Amz-Date") or ""
        token = header(request, "X-Amz-Security-Token")
        presigned = False
    elif "X-Amz-Signature" in request.args:
        if request.args.get("X-Amz-Algorithm") != ALGORITHM:
            raise SignatureError("malformed", f"X-Amz-Algorithm only supports \"{ALGORITHM}\".")
        credential = request.args.get("X-Amz-Credential", "")
        signed = request.args.get("X-Amz-SignedHeaders", "")
        signature = request.args["X-Amz-Signature"]
        amz_date = request.args.get("X-Amz-Date", "")
        token = request.args.get("X-Amz-Security-Token")
        presigned = True
        _check_not_expired(amz_date, request.args.get("X-Amz-Expires", ""))
    elif "AWSAccessKeyId" in request.args and "Signature" in request.args:  # a SigV2 presigned URL
        raise SignatureError("unsupported", "The authorization mechanism you have provided is not supported. "
                                            f"Please use {ALGORITHM}.")
    else:
        return None
    scope = _CREDENTIAL.match(credential)
    if scope is None:
        raise SignatureError("malformed", f"Credential should be scoped to a valid region, not '{credential}'.")
    if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date) or amz_date[:8] != scope["date"]:
        raise SignatureError("malformed", "X-Amz-Date must be the signing time as yyyyMMdd'T'HHmmss'Z', "
                                          "on the date of the credential scope.")
    return Signature(scope["key"], scope["date"], scope["region"], scope["service"], tuple(signed.split(";")),
                     signature, amz_date, token, presigned)


def _malformed_message(header: str) -> str:
    if not header.startswith(ALGORITHM):
        return f"Authorization header's algorithm must be {ALGORITHM}."
    missing = [part for part in ("Credential", "SignedHeaders", "Signature") if f"{part}=" not in header]
    if missing:
        return f"Authorization header requires '{missing[0]}' parameter. Authorization={header[:200]}"
    return f"Authorization header is malformed. Authorization={header[:200]}"


def _check_not_expired(amz_date: str, expires: str) -> None:
    if not expires.isdigit() or not 1 <= int(expires) <= _MAX_PRESIGNED_SECONDS:
        raise SignatureError("malformed", "X-Amz-Expires must be a number of seconds from 1 to 604800.")
    try:
        signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return  # parse_signature names the bad date
    if dt.datetime.now(dt.UTC) > signed_at + dt.timedelta(seconds=int(expires)):
        raise SignatureError("expired_request", "Request has expired")


def find_principal(signature: Signature, account_id: str) -> Principal:
    """The IAM user or assumed role behind an access key, by moto's own lookup."""
    headers = {} if signature.session_token is None else {"X-Amz-Security-Token": signature.session_token}
    try:
        key = create_access_key(account_id, "aws", signature.access_key_id, headers)
    except CreateAccessKeyFailure as failure:
        if failure.reason == "InvalidToken":
            raise SignatureError("invalid_token", "The security token included in the request is invalid.") from None
        raise SignatureError("unknown_key", "The security token included in the request is invalid.") from None
    credentials = key.create_credentials()
    expiration = None
    identity_arn = key.arn
    for role in sts_backends[account_id]["aws"].assumed_roles:
        if role.access_key_id == signature.access_key_id:
            expiration, identity_arn = role.expiration.replace(tzinfo=dt.UTC), role.role_arn
    return Principal(key.arn, identity_arn, credentials.secret_key, credentials.token, expiration,
                     tuple(key.collect_policies()))


def check_signature(request: Request, signature: Signature, secret_access_key: str) -> None:
    """Recompute the signature and compare. The canonical request is botocore's: its rules for
    the path (S3's as sent, other services' normalized and encoded again) and the query, with the
    headers and the payload hash read straight from the request."""
    s3 = signature.service == "s3"
    if s3 and not signature.presigned and header(request, "X-Amz-Content-SHA256") is None:
        raise SignatureError("missing_content_sha256", "Missing required header for this request: x-amz-content-sha256")
    auth = _auth(s3, signature.presigned)
    path, _, query = (request.environ.get("REQUEST_URI") or request.full_path).partition("?")
    if signature.presigned:
        query = "&".join(part for part in query.split("&") if not part.startswith("X-Amz-Signature="))
    headers = []
    for name in signature.signed_headers:
        value = header(request, name)
        if value is None:
            raise SignatureError("mismatch", _MISMATCH)  # a signed header the request lacks
        headers.append(f"{name}:{' '.join(value.split())}")
    if "x-amz-content-sha256" in signature.signed_headers:
        payload_hash = header(request, "X-Amz-Content-SHA256") or ""
    elif s3 or signature.presigned:
        payload_hash = "UNSIGNED-PAYLOAD"
    else:
        payload_hash = hashlib.sha256(request.get_data(cache=True)).hexdigest()
    canonical_request = "\n".join([
        request.method, _canonical_path(s3, path or "/"), auth._canonical_query_string_url(SplitResult(
            "", "", "", query, "")), "\n".join(headers) + "\n", ";".join(signature.signed_headers), payload_hash])
    scope = f"{signature.date}/{signature.region}/{signature.service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, signature.amz_date, scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = signing_key(secret_access_key, signature.date, signature.region, signature.service)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.signature):
        raise SignatureError("mismatch", _MISMATCH)


@lru_cache(maxsize=1024)
def _canonical_path(s3: bool, path: str) -> str:
    """botocore's canonical path of a request path (S3's as sent, other services' normalized and
    encoded again, presigned or not): the same for every request to the path, so made once."""
    return _auth(s3, False)._normalize_url_path(path)


@lru_cache(maxsize=4)
def _auth(s3: bool, presigned: bool) -> SigV4Auth:
    """botocore's signer of this kind, for its path and query rules (it signs nothing here)."""
    kind = {(False, False): SigV4Auth, (False, True): SigV4QueryAuth,
            (True, False): S3SigV4Auth, (True, True): S3SigV4QueryAuth}[(s3, presigned)]
    return kind(Credentials("", ""), "", "")


_MISMATCH = ("The request signature we calculated does not match the signature you provided. "
             "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")


@lru_cache(maxsize=1024)
def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """SigV4's derived key, the same all day for a key, region and service: derived once."""
    key = ("AWS4" + secret_access_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
