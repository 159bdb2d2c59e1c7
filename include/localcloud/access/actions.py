"""What a request asks to do, in IAM's terms: the action (`sagemaker:CreateTrainingJob`), the
resource ARNs it acts on, the roles it passes to SageMaker, and the protocol its errors speak.
One function a service family, reading the request the way its protocol carries names."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from moto.cloudformation.models import cloudformation_backends
from moto.iam.models import iam_backends
from werkzeug.wrappers import Request

JSON, REST_JSON, QUERY, S3 = "json", "rest-json", "query", "s3"


@dataclass(frozen=True)
class Access:
    action: str
    resources: tuple[str, ...]
    protocol: str
    passed_roles: tuple[str, ...] = ()  # iam:PassRole of each, to sagemaker.amazonaws.com
    # (action, resource) checked too: CopyObject's s3:GetObject of its source, a Create* with
    # Tags' sagemaker:AddTags of what it creates.
    also: tuple[tuple[str, str], ...] = ()


def json_params(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(request.get_data(cache=True) or b"{}")
    except ValueError:
        return {}  # the service itself answers the bad body
    return value if isinstance(value, dict) else {}


# -- SageMaker, Feature Store runtime, SageMaker runtime ---------------------------------------
# The member naming a resource, and the resource type in its ARN (SageMaker lowercases names).
SAGEMAKER_NAMES = {
    "TrainingJobName": "training-job",
    "ProcessingJobName": "processing-job",
    "HyperParameterTuningJobName": "hyper-parameter-tuning-job",
    "ModelName": "model",
    "EndpointConfigName": "endpoint-config",
    "EndpointName": "endpoint",
    "FeatureGroupName": "feature-group",
    "ModelPackageGroupName": "model-package-group",
    "ContextName": "context",
    "ActionName": "action",
    "ArtifactName": "artifact",
}
_ARN_MEMBERS = ("ResourceArn", "ArtifactArn", "SourceArn", "DestinationArn", "ModelPackageArn")
# Where each operation that hands SageMaker a role names it (iam:PassRole).
PASSED_ROLES: dict[str, tuple[tuple[str, ...], ...]] = {
    "CreateTrainingJob": (("RoleArn",),),
    "CreateProcessingJob": (("RoleArn",),),
    "CreateHyperParameterTuningJob": (("TrainingJobDefinition", "RoleArn"),),
    "CreateModel": (("ExecutionRoleArn",),),
    "CreateFeatureGroup": (("RoleArn",),),
}


def sagemaker_arn(region: str, account: str, kind: str, name: str) -> str:
    if name.startswith("arn:"):
        return name
    return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name.lower()}"


def sagemaker_access(operation: str, params: dict[str, Any], region: str, account: str,
                     protocol: str = JSON) -> Access:
    resources: list[str] = []
    if operation in ("CreateModelPackage", "ListModelPackages") and "ModelPackageGroupName" in params:
        resources.append(sagemaker_arn(region, account, "model-package", f"{params['ModelPackageGroupName']}/*"))
    elif "ModelPackageName" in params:
        resources.append(sagemaker_arn(region, account, "model-package", params["ModelPackageName"]))
    named = {member: kind for member, kind in SAGEMAKER_NAMES.items() if isinstance(params.get(member), str)}
    # The resource an operation is named after (CreateEndpoint's endpoint, not its config); else
    # the one it names (GetRecord's feature group).
    own = {member: kind for member, kind in named.items() if operation.endswith(member.removesuffix("Name"))}
    resources += [sagemaker_arn(region, account, kind, params[member]) for member, kind in (own or named).items()]
    resources += [params[member] for member in _ARN_MEMBERS if isinstance(params.get(member), str)]
    if operation == "CreateArtifact":
        resources.append(sagemaker_arn(region, account, "artifact", "*"))
    if operation == "BatchGetRecord":
        resources += [sagemaker_arn(region, account, "feature-group", item.get("FeatureGroupName", ""))
                      for item in params.get("Identifiers", []) if isinstance(item, dict)]
    passed = []
    for path in PASSED_ROLES.get(operation, ()):
        value: Any = params
        for member in path:
            value = value.get(member) if isinstance(value, dict) else None
        if isinstance(value, str):
            passed.append(value)
    for definition in params.get("TrainingJobDefinitions", []) if operation == "CreateHyperParameterTuningJob" else ():
        if isinstance(definition, dict) and isinstance(definition.get("RoleArn"), str):
            passed.append(definition["RoleArn"])
    tagged: tuple[tuple[str, str], ...] = ()
    if operation.startswith("Create") and params.get("Tags") and resources:
        # Tags given on create need sagemaker:AddTags of the new resource (named first), as on SageMaker.
        tagged = (("sagemaker:AddTags", resources[0]),)
    return Access(f"sagemaker:{operation}", tuple(dict.fromkeys(resources)) or ("*",), protocol, tuple(passed),
                  tagged)


def athena_access(operation: str, params: dict[str, Any], region: str, account: str) -> Access:
    workgroup = params.get("WorkGroup") if isinstance(params.get("WorkGroup"), str) else "primary"
    return Access(f"athena:{operation}", (f"arn:aws:athena:{region}:{account}:workgroup/{workgroup}",), JSON)


# -- moto's services ---------------------------------------------------------------------------
def glue_access(operation: str, params: dict[str, Any], region: str, account: str) -> Access:
    prefix = f"arn:aws:glue:{region}:{account}"
    database = params.get("DatabaseName") or (params.get("DatabaseInput") or {}).get("Name")
    table = params.get("TableName") or (params.get("TableInput") or {}).get("Name")
    if operation in ("GetDatabase", "DeleteDatabase", "UpdateDatabase"):
        database = params.get("Name")
    elif operation in ("GetTable", "DeleteTable"):
        table = params.get("Name")
    elif operation in ("GetDatabases", "SearchTables"):
        database = "*"
    if operation in ("GetTables", "SearchTables"):
        table = "*"
    resources = [f"{prefix}:catalog"]
    if database:
        resources.append(f"{prefix}:database/{database}")
        if table:
            resources.append(f"{prefix}:table/{database}/{table}")
    return Access(f"glue:{operation}", tuple(resources), JSON)


def logs_access(operation: str, params: dict[str, Any], region: str, account: str) -> Access:
    group, stream = params.get("logGroupName"), params.get("logStreamName")
    prefix = f"arn:aws:logs:{region}:{account}:log-group"
    if group and stream:
        resource = f"{prefix}:{group}:log-stream:{stream}"
    elif group:
        resource = f"{prefix}:{group}:*"
    else:
        resource = f"{prefix}:*"
    return Access(f"logs:{operation}", (resource,), JSON)


def query_access(service: str, request: Request, region: str, account: str) -> Access:
    """STS, IAM and CloudFormation: the AWS query protocol (Action=... in the form or the URL)."""
    params = {name: values[0] for name, values in parse_qs(request.get_data(cache=True).decode("utf-8", "replace"))
              .items()}
    params.update({name: value for name, value in request.args.items() if name not in params})
    operation = params.get("Action", "")
    resources: list[str] = []
    if service == "sts" and "RoleArn" in params:
        resources.append(params["RoleArn"])
    elif service == "iam":
        iam = iam_backends[account]["aws"]
        if name := params.get("RoleName"):
            role = next((role for role in iam.roles.values() if role.name == name), None)
            resources.append(role.arn if role else f"arn:aws:iam::{account}:role/{name}")
        if name := params.get("UserName"):
            resources.append(f"arn:aws:iam::{account}:user/{name}")
        if name := params.get("GroupName"):
            resources.append(f"arn:aws:iam::{account}:group/{name}")
        if name := params.get("InstanceProfileName"):
            resources.append(f"arn:aws:iam::{account}:instance-profile/{name}")
        if arn := params.get("PolicyArn"):
            resources.append(arn)
        elif operation == "CreatePolicy" and (name := params.get("PolicyName")):
            resources.append(f"arn:aws:iam::{account}:policy{params.get('Path', '/')}{name}")
    elif service == "cloudformation" and (name := params.get("StackName")):
        resources.append(_stack_arn(name, region, account))
    return Access(f"{service}:{operation}", tuple(resources) or ("*",), QUERY)


def _stack_arn(name: str, region: str, account: str) -> str:
    if name.startswith("arn:"):
        return name
    stacks = cloudformation_backends[account][region].stacks.values()
    found = next((stack.stack_id for stack in stacks if stack.name == name and stack.status != "DELETE_COMPLETE"), None)
    return found or f"arn:aws:cloudformation:{region}:{account}:stack/{name}/*"


# S3: the action of a request by its method and sub-resource (path-style: /bucket/key).
_S3_BUCKET_SUBRESOURCES = {
    "policy": ("GetBucketPolicy", "PutBucketPolicy", "DeleteBucketPolicy"),
    "tagging": ("GetBucketTagging", "PutBucketTagging", "PutBucketTagging"),
    "encryption": ("GetEncryptionConfiguration", "PutEncryptionConfiguration", "PutEncryptionConfiguration"),
    "publicAccessBlock": ("GetBucketPublicAccessBlock", "PutBucketPublicAccessBlock",
                          "PutBucketPublicAccessBlock"),
    "versioning": ("GetBucketVersioning", "PutBucketVersioning", "PutBucketVersioning"),
    "acl": ("GetBucketAcl", "PutBucketAcl", "PutBucketAcl"),
    "cors": ("GetBucketCORS", "PutBucketCORS", "PutBucketCORS"),
    "lifecycle": ("GetLifecycleConfiguration", "PutLifecycleConfiguration", "PutLifecycleConfiguration"),
    "ownershipControls": ("GetBucketOwnershipControls", "PutBucketOwnershipControls",
                          "PutBucketOwnershipControls"),
    "location": ("GetBucketLocation", "GetBucketLocation", "GetBucketLocation"),
    "notification": ("GetBucketNotification", "PutBucketNotification", "PutBucketNotification"),
    "uploads": ("ListBucketMultipartUploads", "ListBucketMultipartUploads", "ListBucketMultipartUploads"),
    "versions": ("ListBucketVersions", "ListBucketVersions", "ListBucketVersions"),
}
_S3_OBJECT_SUBRESOURCES = {
    "tagging": ("GetObjectTagging", "PutObjectTagging", "DeleteObjectTagging"),
    "acl": ("GetObjectAcl", "PutObjectAcl", "PutObjectAcl"),
}


def s3_access(request: Request) -> Access:
    path = request.environ.get("REQUEST_URI", request.path).split("?", 1)[0]
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    method = request.method
    args = request.args
    if not bucket:
        return Access("s3:ListAllMyBuckets", ("*",), S3)
    if not key:
        resource = f"arn:aws:s3:::{bucket}"
        for name, (get, put, delete) in _S3_BUCKET_SUBRESOURCES.items():
            if name in args:
                action = {"GET": get, "HEAD": get, "PUT": put, "DELETE": delete}.get(method, put)
                return Access(f"s3:{action}", (resource,), S3)
        if method == "POST" and "delete" in args:
            # DeleteObjects: s3:DeleteObject on each key named in the body
            keys = re.findall(rb"<Key>(.*?)</Key>", request.get_data(cache=True))
            objects = tuple(f"arn:aws:s3:::{bucket}/{unescape_xml(k.decode())}" for k in keys)
            return Access("s3:DeleteObject", objects or (f"{resource}/*",), S3)
        action = {"GET": "ListBucket", "HEAD": "ListBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}
        return Access(f"s3:{action.get(method, 'ListBucket')}", (resource,), S3)
    resource = f"arn:aws:s3:::{bucket}/{key}"
    for name, (get, put, delete) in _S3_OBJECT_SUBRESOURCES.items():
        if name in args:
            action = {"GET": get, "HEAD": get, "PUT": put, "DELETE": delete}.get(method, put)
            return Access(f"s3:{action}", (resource,), S3)
    if method == "DELETE":
        action = "AbortMultipartUpload" if "uploadId" in args else "DeleteObject"
    elif method in ("GET", "HEAD"):
        action = "ListMultipartUploadParts" if "uploadId" in args else "GetObject"
    else:
        action = "PutObject"  # PUT, multipart create / part / complete
    copy_source = request.headers.get("x-amz-copy-source")
    if action == "PutObject" and copy_source:
        source = unquote(copy_source).split("?", 1)[0].lstrip("/")
        return Access("s3:PutObject", (resource,), S3, also=(("s3:GetObject", f"arn:aws:s3:::{source}"),))
    return Access(f"s3:{action}", (resource,), S3)


def unescape_xml(text: str) -> str:
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'")
            .replace("&amp;", "&"))
