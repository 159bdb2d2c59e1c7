"""IAM enforced by the local cloud (LOCALCLOUD_IAM=enforce): each request's signature checked,
its principal found, and its action on each resource it names allowed by the principal's
identity policies, or answered as AWS answers a denial. Decisions are cached per principal,
action and resource until IAM changes; each allowed action is recorded per user or role."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from moto.iam.models import iam_backends
from moto.sts.models import sts_backends
from werkzeug.wrappers import Request, Response

from include.localcloud.access import actions
from include.localcloud.access.actions import JSON, QUERY, REST_JSON, S3, Access
from include.localcloud.access.policy import Decision, documents, evaluate
from include.localcloud.access.signing import (
    Principal,
    Signature,
    SignatureError,
    check_signature,
    find_principal,
    parse_signature,
)
from include.localcloud.protocol import AwsError, error_response, new_request_id

if TYPE_CHECKING:
    from include.localcloud.server import LocalCloud

ENFORCE = "enforce"
SAGEMAKER_PRINCIPAL = "sagemaker.amazonaws.com"
ROLE_SESSION_SECONDS = 12 * 3600  # a job's or model server's credentials; renewed an hour before they end
ROOT_CREDENTIALS_FILE = "root-credentials.json"  # in the state folder: the account root's access key
# STS's answer to AssumeRole signed by the account root (AccessDenied, 403), word for word.
ROOT_MAY_NOT_ASSUME_ROLES = "Roles may not be assumed by root accounts."
KEPT_RESOURCES = 50  # resources remembered per allowed action, to show what an action was used on
KEPT_DESCRIPTIONS = 10_000  # REST paths remembered with their action and resource
KEPT_DECISIONS = 10_000  # decisions cached: S3 object keys, each new, would grow it without end

# AWS's error code and message, by protocol, for each way a signature fails.
_SIGNATURE_ERRORS: dict[str, dict[str, tuple[str, str | None, int]]] = {
    "unknown_key": {JSON: ("UnrecognizedClientException", None, 400),
                    QUERY: ("InvalidClientTokenId", None, 403),
                    S3: ("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                         403)},
    "invalid_token": {JSON: ("UnrecognizedClientException", None, 400),
                      QUERY: ("InvalidClientTokenId", None, 403),
                      S3: ("InvalidToken", "The provided token is malformed or otherwise invalid.", 400)},
    "expired_token": {JSON: ("ExpiredTokenException", None, 400), QUERY: ("ExpiredToken", None, 400),
                      S3: ("ExpiredToken", "The provided token has expired.", 400)},
    "mismatch": {JSON: ("InvalidSignatureException", None, 400), QUERY: ("SignatureDoesNotMatch", None, 403),
                 S3: ("SignatureDoesNotMatch", None, 403)},
    "malformed": {JSON: ("InvalidSignatureException", None, 400), QUERY: ("IncompleteSignature", None, 400),
                  S3: ("AuthorizationHeaderMalformed", None, 400)},
    "expired_request": {JSON: ("InvalidSignatureException", "Signature expired", 400),
                        QUERY: ("SignatureDoesNotMatch", "Signature expired", 403),
                        S3: ("AccessDenied", None, 403)},
    "missing": {JSON: ("MissingAuthenticationTokenException", "Missing Authentication Token", 400),
                QUERY: ("MissingAuthenticationToken", "Missing Authentication Token", 403),
                S3: ("AccessDenied", "Access Denied", 403)},
    "unsupported": {JSON: ("InvalidSignatureException", None, 400), QUERY: ("IncompleteSignature", None, 400),
                    S3: ("InvalidRequest", None, 400)},
    "missing_content_sha256": {JSON: ("InvalidSignatureException", None, 400),
                               QUERY: ("IncompleteSignature", None, 400), S3: ("InvalidRequest", None, 400)},
}


@dataclass(frozen=True)
class RoleCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: dt.datetime

    def environment(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_SESSION_TOKEN": self.session_token}


class Denied(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class Enforcer:
    """The access check of every request the local cloud serves, on when `enforcing`."""

    def __init__(self, cloud: LocalCloud, enforcing: bool) -> None:
        self.cloud = cloud
        self.enforcing = enforcing
        # The local cloud's own calls (its services' background work): a key of this process only.
        self.internal_key_id = "LCINTERNAL" + secrets.token_hex(5).upper()
        self.internal_secret = secrets.token_urlsafe(30)
        self.root_access_key_id, self.root_secret = _root_credentials(cloud.state_dir / ROOT_CREDENTIALS_FILE) \
            if enforcing else ("", "")
        self._principals: dict[tuple[str, str | None], Principal] = {}
        self._decisions: dict[tuple[str, ...], Decision] = {}
        self._documents: dict[str, list[dict[str, Any]]] = {}
        self._rest_accesses: dict[tuple[str, str, str], Access] = {}
        self._roles: dict[str, RoleCredentials] = {}
        self._roles_lock = threading.Lock()
        self._allowed: dict[str, dict[str, list[str]]] = {}
        self._allowed_lock = threading.Lock()

    # -- what the tests and the lead read ----------------------------------------------------
    def allowed_actions(self) -> dict[str, dict[str, list[str]]]:
        """{user or role ARN: {action: [resources, up to KEPT_RESOURCES]}} allowed since start."""
        with self._allowed_lock:
            return {who: {action: list(resources) for action, resources in sorted(used.items())}
                    for who, used in sorted(self._allowed.items())}

    def invalidate(self) -> None:
        """IAM changed (a user, role, key or policy): decide afresh."""
        self._principals = {}
        self._decisions = {}
        self._documents = {}

    # -- credentials of roles the local cloud assumes for jobs and model servers ---------------
    def role_credentials(self, role_arn: str) -> RoleCredentials:
        """Temporary credentials of an execution role, assumed as SageMaker assumes it."""
        with self._roles_lock:
            held = self._roles.get(role_arn)
            if held is not None and held.expiration - dt.timedelta(hours=1) > dt.datetime.now(dt.UTC):
                return held
            self.check_sagemaker_can_assume(role_arn)
            account = role_arn.split(":")[4]
            assumed = sts_backends[account]["aws"].assume_role(
                region_name="us-east-1", role_session_name="SageMaker", role_arn=role_arn, policy="",
                duration=ROLE_SESSION_SECONDS, external_id="")
            held = RoleCredentials(assumed.access_key_id, assumed.secret_access_key, assumed.session_token,
                                   assumed.expiration.replace(tzinfo=dt.UTC))
            self._roles[role_arn] = held
            return held

    def check_sagemaker_can_assume(self, role_arn: str) -> None:
        message = (f"Could not assume role {role_arn}. Please ensure that the role exists and allows principal "
                   f"'{SAGEMAKER_PRINCIPAL}' to assume the role.")
        try:
            role = iam_backends[role_arn.split(":")[4]]["aws"].get_role_by_arn(role_arn)
        except Exception:
            raise AwsError("ValidationException", message) from None
        if not _trusts(role.assume_role_policy_document, service=SAGEMAKER_PRINCIPAL):
            raise AwsError("ValidationException", message)

    # -- the check ---------------------------------------------------------------------------
    def check(self, request: Request, signing_service: str | None, region: str) -> Response | None:
        """None when the request may go on; else the error response AWS would give."""
        protocol = _protocol(request, signing_service)
        try:
            signature = parse_signature(request)
            if signature is None:
                raise SignatureError("missing", "Missing Authentication Token")
            if signature.access_key_id == self.internal_key_id:
                check_signature(request, signature, self.internal_secret)
                return None
            if signature.access_key_id == self.root_access_key_id:
                check_signature(request, signature, self.root_secret)
                return self._check_root(request, signature, protocol)
            principal = self._principal(signature)
            if principal.expiration is not None and principal.expiration < dt.datetime.now(dt.UTC):
                raise SignatureError("expired_token", "The security token included in the request is expired")
            check_signature(request, signature, principal.secret_access_key)
        except SignatureError as error:
            code, message, status = _SIGNATURE_ERRORS[error.reason][protocol if protocol != REST_JSON else JSON]
            return _error(protocol, code, message or error.message, status)
        try:
            access = self.describe(request, signature, protocol)
            self._authorize(principal, access, signature.region)
        except Denied as denied:
            return _error(protocol, denied.code, denied.message, denied.status)
        except AwsError as error:
            return _error(protocol, error.code, error.message, error.status)
        return None

    def _check_root(self, request: Request, signature: Signature, protocol: str) -> Response | None:
        """The account's root user may do anything, as on AWS, but assume a role: STS refuses that
        whatever the role's trust policy says."""
        if signature.service == "sts" and self.describe(request, signature, protocol).action == "sts:AssumeRole":
            return _error(protocol, "AccessDenied", ROOT_MAY_NOT_ASSUME_ROLES, 403)
        return None

    def describe(self, request: Request, signature: Signature, protocol: str) -> Access:
        service, region, account = signature.service, signature.region, self.cloud.account_id
        if protocol == S3:
            return actions.s3_access(request)
        if protocol == REST_JSON:
            # Feature Store and SageMaker runtime calls name their resource in the path alone
            # (BatchGetRecord aside): one description per path, whatever the query (GetRecord's
            # record identifier), serves every record call.
            key = (request.method, request.environ.get("REQUEST_URI", request.path).split("?", 1)[0], region)
            known = self._rest_accesses.get(key)
            if known is None:
                known = self._describe_rest(request, service, region, account)
                if known.action != "sagemaker:BatchGetRecord":
                    if len(self._rest_accesses) >= KEPT_DESCRIPTIONS:
                        self._rest_accesses = {}
                    self._rest_accesses[key] = known
            return known
        if protocol == QUERY:
            return actions.query_access(service, request, region, account)
        operation = request.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        describe = {"sagemaker": actions.sagemaker_access, "athena": actions.athena_access,
                    "glue": actions.glue_access, "logs": actions.logs_access}.get(service)
        if describe is None:
            return Access(f"{service}:{operation}", ("*",), JSON)
        return describe(operation, actions.json_params(request), region, account)

    def _describe_rest(self, request: Request, service: str, region: str, account: str) -> Access:
        for candidate in self.cloud.services:
            routed = getattr(candidate, "route", None)
            if routed is not None and (found := routed(request)) is not None:
                operation, params = found
                if operation.name == "BatchGetRecord":
                    params = {**params, **actions.json_params(request)}
                return actions.sagemaker_access(operation.name, params, region, account, REST_JSON)
        return Access(f"{service}:Unknown", ("*",), REST_JSON)

    def _principal(self, signature: Signature) -> Principal:
        key = (signature.access_key_id, signature.session_token)
        principal = self._principals.get(key)
        if principal is None:
            principal = find_principal(signature, self.cloud.account_id)
            self._principals[key] = principal
        return principal

    def _authorize(self, principal: Principal, access: Access, region: str) -> None:
        if access.action == "sts:GetCallerIdentity":  # AWS allows it whatever the policies say
            return
        checks: list[tuple[str, str, Mapping[str, str]]] = [(access.action, resource, {})
                                                            for resource in access.resources]
        checks += [(action, resource, {}) for action, resource in access.also]
        checks += [("iam:PassRole", role, {"iam:PassedToService": SAGEMAKER_PRINCIPAL})
                   for role in access.passed_roles]
        for action, resource, extra in checks:
            decision = self._decide(principal, action, resource, region, extra)
            if decision is not Decision.ALLOWED:
                raise Denied(*_denial(access.protocol, principal, action, resource, decision))
        if access.action == "sts:AssumeRole":
            self._check_trust(principal, access.resources[0])
        for role in access.passed_roles:
            self.check_sagemaker_can_assume(role)
        with self._allowed_lock:
            used = self._allowed.setdefault(principal.identity_arn, {})
            for action, resource, _ in checks:
                resources = used.setdefault(action, [])
                if resource not in resources and len(resources) < KEPT_RESOURCES:
                    resources.append(resource)

    def _decide(self, principal: Principal, action: str, resource: str, region: str,
                extra: Mapping[str, str]) -> Decision:
        key = (principal.arn, action, resource, region, *extra.values())
        decisions = self._decisions  # invalidate() replaces it: a decision made meanwhile is dropped
        decision = decisions.get(key)
        if decision is None:
            docs = self._documents.get(principal.arn)
            if docs is None:
                docs = self._documents[principal.arn] = documents(principal.policies)
            context = {"aws:RequestedRegion": region, "aws:PrincipalArn": principal.identity_arn,
                       "aws:SecureTransport": "false", **extra}
            if len(decisions) >= KEPT_DECISIONS:
                decisions = self._decisions = {}
            decision = decisions[key] = evaluate(docs, action, resource, context)
        return decision

    def _check_trust(self, principal: Principal, role_arn: str) -> None:
        try:
            role = iam_backends[self.cloud.account_id]["aws"].get_role_by_arn(role_arn)
        except Exception:
            trusted = False
        else:
            trusted = _trusts(role.assume_role_policy_document, aws=principal.identity_arn)
        if not trusted:
            raise Denied("AccessDenied", f"User: {principal.arn} is not authorized to perform: sts:AssumeRole "
                                         f"on resource: {role_arn}", 403)


def _root_credentials(path: Path) -> tuple[str, str]:
    """The account root user's access key, made on first start and kept in the state folder
    (readable by its owner only): what creates the first users and roles, or deploys the template."""
    if not path.exists():
        keys = {"AccessKeyId": "AKIAROOT" + secrets.token_hex(6).upper(), "SecretAccessKey": secrets.token_urlsafe(30)}
        path.touch(mode=0o600)
        path.write_text(json.dumps(keys))
    keys = json.loads(path.read_text())
    return keys["AccessKeyId"], keys["SecretAccessKey"]


def _trusts(trust_policy: str | dict[str, Any], service: str | None = None, aws: str | None = None) -> bool:
    """Does a role's trust policy let this service, or this user or role, assume it?"""
    doc = json.loads(trust_policy) if isinstance(trust_policy, str) else trust_policy
    statements = doc.get("Statement", [])
    allowed = False
    for statement in [statements] if isinstance(statements, dict) else statements:
        named = statement.get("Action", [])
        if not any(item in ("sts:AssumeRole", "sts:*", "*") for item in ([named] if isinstance(named, str) else named)):
            continue
        principal = statement.get("Principal", {})
        if principal == "*":
            matched = True
        elif service is not None:
            services = principal.get("Service", [])
            matched = service in ([services] if isinstance(services, str) else services)
        else:
            names = principal.get("AWS", [])
            names = [names] if isinstance(names, str) else names
            account = (aws or "").split(":")[4] if aws and aws.count(":") >= 5 else ""
            matched = any(name in ("*", aws, account, f"arn:aws:iam::{account}:root") for name in names)
        if matched and statement.get("Effect") == "Deny":
            return False
        allowed = allowed or (matched and statement.get("Effect") == "Allow")
    return allowed


def _protocol(request: Request, signing_service: str | None) -> str:
    if signing_service == "s3":
        return S3
    if "HTTP_X_AMZ_TARGET" in request.environ:
        return JSON
    if signing_service == "sagemaker":
        return REST_JSON
    if signing_service in ("sts", "iam", "cloudformation") or "Action" in request.args:
        return QUERY
    if signing_service is None and "X-Amz-Credential" not in request.args:
        # no signature to name the service: S3 is the one REST-XML service behind this port
        content = request.headers.get("Content-Type", "")
        return QUERY if content.startswith("application/x-www-form-urlencoded") else S3
    if signing_service is None:
        return S3  # presigned URLs are S3's
    return JSON


def _denial(protocol: str, principal: Principal, action: str, resource: str, decision: Decision) -> tuple[str, str, int]:
    shown = f'"{resource}"' if protocol == S3 else resource
    why = ("with an explicit deny in an identity-based policy" if decision is Decision.EXPLICIT_DENY
           else f"because no identity-based policy allows the {action} action")
    message = f"User: {principal.arn} is not authorized to perform: {action} on resource: {shown} {why}"
    if protocol in (S3, QUERY):
        return "AccessDenied", message, 403
    return "AccessDeniedException", message, 400


def _error(protocol: str, code: str, message: str, status: int) -> Response:
    request_id = new_request_id()
    if protocol in (JSON, REST_JSON):
        return error_response(AwsError(code, message, status), request_id, rest=protocol == REST_JSON)
    if protocol == S3:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}'
                f"</Message><RequestId>{request_id}</RequestId></Error>")
        return Response(body, status, content_type="application/xml", headers={"x-amz-request-id": request_id})
    body = (f'<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message>'
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
    return Response(body, status, content_type="text/xml", headers={"x-amzn-RequestId": request_id})
