"""Where moto, which serves CloudFormation, S3 and IAM here, falls short of AWS for what
infra/template.yaml needs, and what the local cloud does instead. Applied once, when imported.

- AWS::S3::BucketPolicy: moto's CloudFormation has no such resource; here it puts, replaces and
  deletes the bucket's policy.
- AWS::S3::Bucket: moto ignores PublicAccessBlockConfiguration; here it is put on the bucket.
- AWS::IAM::Role: moto keeps inline policies as parsed dicts (GetRolePolicy then answers their
  Python repr), and on a stack update changes only the description. Here, on a create and an
  update, the trust policy and the inline policies (as JSON) follow the template.
- A change set (what `aws cloudformation deploy` makes) that creates a stack leaves moto's stack
  without its template, hence without outputs; here the stack gets the change set's template.
- Bucket policies: moto applies a statement whatever its Condition says, so the template's
  TLS-only Deny (aws:SecureTransport false) would deny every request. Here conditions are
  evaluated against the request's context as AWS does: a condition on a key the context lacks
  does not hold. The local cloud serves plain HTTP on loopback only, where TLS has nothing to
  protect: its requests count as sent over TLS (aws:SecureTransport true).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from typing import Any

from moto.cloudformation import parsing
from moto.cloudformation.models import ChangeSet
from moto.core.common_models import CloudFormationModel
from moto.iam.access_control import IAMPolicyStatement, PermissionResult
from moto.iam.models import Role, iam_backends
from moto.s3.models import FakeBucket, s3_backends
from moto.utilities.utils import get_partition

# The context keys of every request the local cloud serves.
REQUEST_CONTEXT = {"aws:SecureTransport": "true"}


def _backend(account_id: str, region_name: str) -> Any:
    return s3_backends[account_id][get_partition(region_name)]


class BucketPolicy(CloudFormationModel):
    """AWS::S3::BucketPolicy: the policy of one bucket."""

    def __init__(self, bucket_name: str, account_id: str, region_name: str) -> None:
        self.bucket_name = bucket_name
        self.account_id = account_id
        self.region_name = region_name

    @property
    def physical_resource_id(self) -> str:
        return self.bucket_name

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::S3::BucketPolicy"

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> BucketPolicy:
        properties = cloudformation_json["Properties"]
        document = properties["PolicyDocument"]
        _backend(account_id, region_name).put_bucket_policy(properties["Bucket"], _as_json(document).encode())
        return cls(properties["Bucket"], account_id, region_name)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[misc]
        cls,
        original_resource: BucketPolicy,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> BucketPolicy:
        if cloudformation_json["Properties"]["Bucket"] != original_resource.bucket_name:
            original_resource.delete(account_id, region_name)
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[misc]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        cls(resource_name, account_id, region_name).delete(account_id, region_name)

    def delete(self, account_id: str, region_name: str) -> None:
        backend = _backend(account_id, region_name)
        if self.bucket_name in backend.buckets:
            backend.delete_bucket_policy(self.bucket_name)


def _follow_template(
    model: type[CloudFormationModel], complete: Callable[[Any, dict[str, Any], str, str], None]
) -> None:
    """After moto creates or updates a `model` resource from a template, `complete(resource,
    properties, account_id, region_name)` puts on it what moto leaves out."""
    create = model.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    update = model.update_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_and_complete(
        cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        resource = create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        complete(resource, cloudformation_json.get("Properties", {}), account_id, region_name)
        return resource

    def update_and_complete(
        cls: type, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str,
        region_name: str,
    ) -> Any:
        resource = update(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name)
        complete(resource, cloudformation_json.get("Properties", {}), account_id, region_name)
        return resource

    model.create_from_cloudformation_json = classmethod(create_and_complete)  # type: ignore[method-assign,assignment]
    model.update_from_cloudformation_json = classmethod(update_and_complete)  # type: ignore[method-assign,assignment]


def _put_public_access_block(bucket: FakeBucket, properties: dict[str, Any], account_id: str, region: str) -> None:
    block = properties.get("PublicAccessBlockConfiguration")
    backend = _backend(account_id, region)
    if block:
        backend.put_public_access_block(bucket.name, block)
    else:
        backend.delete_public_access_block(bucket.name)


def _as_json(document: str | dict[str, Any]) -> str:
    return document if isinstance(document, str) else json.dumps(document)


def _put_role_policies(role: Role, properties: dict[str, Any], account_id: str, region: str) -> None:
    """The role's trust policy and inline policies become the template's, as JSON (moto keeps
    inline policies as parsed dicts, which GetRolePolicy then answers as Python's repr of them)."""
    backend = iam_backends[account_id][get_partition(region)]
    backend.update_assume_role_policy(role.name, _as_json(properties["AssumeRolePolicyDocument"]))
    wanted = {policy["PolicyName"]: policy["PolicyDocument"] for policy in properties.get("Policies", [])}
    for name in set(role.policies) - set(wanted):
        role.delete_policy(name)
    for name, document in wanted.items():
        role.put_policy(name, _as_json(document))


_apply_change_set = ChangeSet.apply


def _apply_change_set_with_template(change_set: ChangeSet) -> None:
    _apply_change_set(change_set)
    stack = change_set.stack
    stack.template = change_set.template
    stack.template_dict = change_set.template_dict
    stack.description = change_set.template_dict.get("Description")
    stack.output_map = stack._create_output_map()


def _condition_holds(operator: str, key: str, expected: str | list[str]) -> bool:
    """One condition of a policy statement against REQUEST_CONTEXT, as IAM evaluates it."""
    if_exists = operator.endswith("IfExists")
    operator = operator.removesuffix("IfExists")
    if key not in REQUEST_CONTEXT:
        return if_exists
    actual = REQUEST_CONTEXT[key]
    values = [expected] if isinstance(expected, str) else expected
    if operator == "Bool":
        return actual.lower() in (str(value).lower() for value in values)
    if operator == "StringEquals":
        return actual in values
    if operator == "StringNotEquals":
        return actual not in values
    if operator == "StringLike":
        return any(fnmatch.fnmatchcase(actual, value) for value in values)
    if operator == "StringNotLike":
        return not any(fnmatch.fnmatchcase(actual, value) for value in values)
    raise NotImplementedError(f"bucket policy condition operator {operator} is not supported by the local cloud")


def _statement_applies(statement: dict[str, Any]) -> bool:
    return all(
        _condition_holds(operator, key, expected)
        for operator, conditions in statement.get("Condition", {}).items()
        for key, expected in conditions.items()
    )


def _bucket_permission(bucket: FakeBucket, action: str, resource: str) -> PermissionResult:
    """moto's evaluation of a bucket policy (Principal "*" statements), with each statement's
    conditions evaluated: a statement whose conditions do not hold has no effect."""
    if bucket.policy is None:
        return PermissionResult.NEUTRAL
    statements = json.loads(bucket.policy)["Statement"]
    result = PermissionResult.NEUTRAL
    for statement in statements if isinstance(statements, list) else [statements]:
        if not _statement_applies(statement):
            continue
        unconditional = {name: value for name, value in statement.items() if name != "Condition"}
        permission = IAMPolicyStatement(unconditional).is_action_permitted(action, resource)
        if permission == PermissionResult.DENIED:
            return PermissionResult.DENIED
        if permission == PermissionResult.PERMITTED:
            result = PermissionResult.PERMITTED
    return result


_follow_template(FakeBucket, _put_public_access_block)
FakeBucket.get_permission = _bucket_permission  # type: ignore[method-assign,assignment]
_follow_template(Role, _put_role_policies)
ChangeSet.apply = _apply_change_set_with_template  # type: ignore[method-assign]
# moto caches its map of resource types on first use: make it see BucketPolicy.
for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
    cached.cache_clear()
