"""The model registry: model package groups and the model packages (versions) in them.

Like SageMaker, registering a package also records its lineage: an artifact for the package
(SourceUri = its ARN), artifacts for each container's image and model data contributing to it,
and, for a version, a context for its group that the package artifact contributes to. Lineage
entities of other areas find a model package through ListArtifacts(SourceUri=<package ARN>)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from include.localcloud.protocol import AwsError, RequestContext, not_found
from include.localcloud.sagemaker.lineage import associate, track_artifact, track_context
from include.localcloud.sagemaker.models import Resource, list_page, now, pick, sagemaker_arn
from include.localcloud.sagemaker.tags import TAGS, save_tags
from include.localcloud.store import Store

if TYPE_CHECKING:
    from include.localcloud.server import LocalCloud

MODEL_PACKAGE_GROUP = "model-package-group"  # keyed by name
MODEL_PACKAGE = "model-package"  # keyed by ARN: versions have no name of their own
# Request members that select where a package goes rather than describe it.
PLACEMENT_MEMBERS = ("ModelPackageName", "ModelPackageGroupName", "Tags", "ClientToken")
PACKAGE_SUMMARY = (
    "ModelPackageName",
    "ModelPackageGroupName",
    "ModelPackageVersion",
    "ModelPackageArn",
    "ModelPackageDescription",
    "CreationTime",
    "ModelPackageStatus",
    "ModelApprovalStatus",
    "ModelLifeCycle",
    "ModelPackageRegistrationType",
)
GROUP_SUMMARY = (
    "ModelPackageGroupName",
    "ModelPackageGroupArn",
    "ModelPackageGroupDescription",
    "CreationTime",
    "ModelPackageGroupStatus",
    "ManagedConfiguration",
)


def invalid(message: str) -> AwsError:
    return AwsError("ValidationException", message)


def in_group(package: Resource, group: str, ctx: RequestContext) -> bool:
    """Whether a package is a version of `group` (a name or an ARN)."""
    name = package.get("ModelPackageGroupName")
    return name is not None and group in (name, sagemaker_arn(ctx, "model-package-group", name))


def record_package_lineage(store: Store, ctx: RequestContext, package: Resource) -> None:
    """The lineage entities SageMaker creates for a new model package."""
    package_artifact = track_artifact(store, ctx, package["ModelPackageArn"], "Model")
    for container in package.get("InferenceSpecification", {}).get("Containers", []):
        for source_uri, artifact_type in (
            (container.get("Image"), "Image"),
            (container.get("ModelDataUrl"), "Model"),
        ):
            if source_uri:
                contributor = track_artifact(store, ctx, source_uri, artifact_type)
                associate(store, contributor, package_artifact, "ContributedTo")
    if group := package.get("ModelPackageGroupName"):
        group_arn = sagemaker_arn(ctx, "model-package-group", group)
        group_context = track_context(store, ctx, group, group_arn, "ModelGroup")
        associate(store, package_artifact, group_context, "ContributedTo")


class RegistryOperations:
    cloud: LocalCloud

    # -- groups ----------------------------------------------------------------------------
    def create_model_package_group(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        name = params["ModelPackageGroupName"]
        group = {
            "ModelPackageGroupName": name,
            "ModelPackageGroupArn": sagemaker_arn(ctx, "model-package-group", name),
            "CreationTime": now(),
            "CreatedBy": {},
            "ModelPackageGroupStatus": "Completed",
        } | pick(params, "ModelPackageGroupDescription", "ManagedConfiguration")
        # The provider's hook recognises an existing group by this message's start.
        if not self.cloud.store.insert(MODEL_PACKAGE_GROUP, name, group):
            raise invalid(f"Model Package Group already exists: {group['ModelPackageGroupArn']}")
        save_tags(self.cloud.store, group["ModelPackageGroupArn"], params.get("Tags"))
        return {"ModelPackageGroupArn": group["ModelPackageGroupArn"]}

    def describe_model_package_group(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._model_package_group(params["ModelPackageGroupName"])

    def list_model_package_groups(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        groups = self.cloud.store.list(MODEL_PACKAGE_GROUP)
        page, token = list_page(groups, params, name_key="ModelPackageGroupName", default_order="Ascending")
        summaries = [pick(g, *GROUP_SUMMARY) for g in page]
        return {"ModelPackageGroupSummaryList": summaries, **({"NextToken": token} if token else {})}

    def delete_model_package_group(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        with store.transaction():
            group = self._model_package_group(params["ModelPackageGroupName"])
            name = group["ModelPackageGroupName"]
            versions = [p for p in store.list(MODEL_PACKAGE) if p.get("ModelPackageGroupName") == name]
            if versions:
                raise AwsError(
                    "ConflictException",
                    f"Model Package Group {name} still holds {len(versions)} model package(s); "
                    "delete them before deleting the group.",
                )
            store.delete(MODEL_PACKAGE_GROUP, name)
            store.delete(TAGS, group["ModelPackageGroupArn"])
        return {}

    # -- packages --------------------------------------------------------------------------
    def create_model_package(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        package = {k: v for k, v in params.items() if k not in PLACEMENT_MEMBERS} | {
            "CreationTime": now(),
            "CreatedBy": {},
            "ModelPackageStatus": "Completed",
            "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        }
        with store.transaction():
            if "ModelPackageGroupName" in params:
                if "ModelPackageName" in params:
                    raise invalid(
                        "ModelPackageName does not apply to a versioned model package; give only "
                        "ModelPackageGroupName."
                    )
                package |= self._next_model_package_version(params["ModelPackageGroupName"], ctx)
                package.setdefault("ModelApprovalStatus", "PendingManualApproval")
            elif "ModelPackageName" in params:
                name = params["ModelPackageName"]
                package |= {
                    "ModelPackageName": name,
                    "ModelPackageArn": sagemaker_arn(ctx, "model-package", name),
                }
            else:
                raise invalid(
                    "Either ModelPackageGroupName (a versioned model package) or ModelPackageName "
                    "(an unversioned one) is required."
                )
            if not store.insert(MODEL_PACKAGE, package["ModelPackageArn"], package):
                raise invalid(f"Model Package already exists: {package['ModelPackageArn']}")
            save_tags(store, package["ModelPackageArn"], params.get("Tags"))
            record_package_lineage(store, ctx, package)
        return {"ModelPackageArn": package["ModelPackageArn"]}

    def describe_model_package(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._model_package(params["ModelPackageName"], ctx)

    def list_model_packages(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        packages = self.cloud.store.list(MODEL_PACKAGE)
        group = params.get("ModelPackageGroupName")
        if group:
            packages = [p for p in packages if in_group(p, group, ctx)]
        # Unversioned packages only unless told otherwise, or a group is named.
        package_type = params.get("ModelPackageType", "Both" if group else "Unversioned")
        if package_type != "Both":
            versioned = package_type == "Versioned"
            packages = [p for p in packages if ("ModelPackageVersion" in p) == versioned]
        if status := params.get("ModelApprovalStatus"):
            packages = [p for p in packages if p.get("ModelApprovalStatus") == status]
        page, token = list_page(packages, params, name_key="ModelPackageName", default_order="Ascending")
        summaries = [pick(p, *PACKAGE_SUMMARY) for p in page]
        return {"ModelPackageSummaryList": summaries, **({"NextToken": token} if token else {})}

    def update_model_package(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        def change(package: Resource) -> None:
            package.update(
                pick(
                    params,
                    "ModelApprovalStatus",
                    "ApprovalDescription",
                    "ModelPackageRegistrationType",
                    "InferenceSpecification",
                    "SourceUri",
                    "ModelCard",
                    "ModelLifeCycle",
                )
            )
            metadata = {
                **package.get("CustomerMetadataProperties", {}),
                **params.get("CustomerMetadataProperties", {}),
            }
            for key in params.get("CustomerMetadataPropertiesToRemove", []):
                metadata.pop(key, None)
            package.pop("CustomerMetadataProperties", None)
            if metadata:  # the API admits no empty map
                package["CustomerMetadataProperties"] = metadata
            if added := params.get("AdditionalInferenceSpecificationsToAdd"):
                package["AdditionalInferenceSpecifications"] = (
                    package.get("AdditionalInferenceSpecifications", []) + added
                )
            package["LastModifiedTime"] = now()
            package["LastModifiedBy"] = {}

        arn = params["ModelPackageArn"]
        if self.cloud.store.update(MODEL_PACKAGE, arn, change) is None:
            raise not_found(f"ModelPackage {arn} does not exist.")
        return {"ModelPackageArn": arn}

    def delete_model_package(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        package = self._model_package(params["ModelPackageName"], ctx)
        with self.cloud.store.transaction():
            self.cloud.store.delete(MODEL_PACKAGE, package["ModelPackageArn"])
            self.cloud.store.delete(TAGS, package["ModelPackageArn"])
        return {}

    # -- shared ----------------------------------------------------------------------------
    def _model_package_group(self, name_or_arn: str) -> Resource:
        store = self.cloud.store
        group = store.get(MODEL_PACKAGE_GROUP, name_or_arn)
        if group is None and name_or_arn.startswith("arn:"):
            group = next(
                (g for g in store.list(MODEL_PACKAGE_GROUP) if g["ModelPackageGroupArn"] == name_or_arn), None
            )
        if group is None:
            raise not_found(f"ModelPackageGroup {name_or_arn} does not exist.")
        return group

    def _next_model_package_version(self, group_name_or_arn: str, ctx: RequestContext) -> Resource:
        """Name, group, version and ARN of the next version in a group (inside a transaction)."""
        name = self._model_package_group(group_name_or_arn)["ModelPackageGroupName"]
        versions = [
            p["ModelPackageVersion"]
            for p in self.cloud.store.list(MODEL_PACKAGE)
            if p.get("ModelPackageGroupName") == name
        ]
        version = max(versions, default=0) + 1
        return {
            "ModelPackageName": name,
            "ModelPackageGroupName": name,
            "ModelPackageVersion": version,
            "ModelPackageArn": sagemaker_arn(ctx, "model-package", f"{name}/{version}"),
        }

    def _model_package(self, name_or_arn: str, ctx: RequestContext) -> Resource:
        """By ARN, "<group>/<version>" or the name of an unversioned package."""
        arn = (
            name_or_arn
            if name_or_arn.startswith("arn:")
            else sagemaker_arn(ctx, "model-package", name_or_arn)
        )
        package = self.cloud.store.get(MODEL_PACKAGE, arn)
        if package is None:
            raise not_found(f"ModelPackage {name_or_arn} does not exist.")
        return package
