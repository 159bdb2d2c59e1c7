"""ML lineage tracking: contexts, artifacts, actions and the associations between them.

As on SageMaker, an association joins two lineage entities (the service model admits only
artifact, action, context, experiment and trial-component ARNs). SageMaker resources enter the
graph through the entities SageMaker creates for them: a model package gets an artifact whose
SourceUri is its ARN (see registry.py), an endpoint a context, a job the trial component
`<job>-aws-training-job` / `-aws-processing-job` / `-aws-transform-job`. The helpers
`track_artifact`, `track_context` and `associate` create such entities for other areas."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from include.localcloud.protocol import AwsError, RequestContext
from include.localcloud.sagemaker.models import Resource, list_page, now, pick, sagemaker_arn
from include.localcloud.sagemaker.tags import TAGS, save_tags
from include.localcloud.store import Store

if TYPE_CHECKING:
    from include.localcloud.server import LocalCloud

# Artifacts are keyed by ARN (AWS gives them no required name); contexts and actions by ARN
# too, which is their name lower-cased in the request's region (how SageMaker scopes names).
ARTIFACT = "artifact"
CONTEXT = "context"
ACTION = "action"
ASSOCIATION = "association"
# Trial components SageMaker creates for jobs: name suffix -> (store kind and name key of the
# job, trial component type).
JOB_TRIAL_COMPONENTS = {
    "-aws-training-job": ("training-job", "TrainingJobName", "SageMakerTrainingJob"),
    "-aws-processing-job": ("processing-job", "ProcessingJobName", "SageMakerProcessingJob"),
    "-aws-transform-job": ("transform-job", "TransformJobName", "SageMakerTransformJob"),
}
DEFAULT_PAGE_SIZE = 10  # lineage List* calls return 10 results unless told otherwise


def lineage_not_found(entity: str, key: str, value: str) -> AwsError:
    return AwsError("ResourceNotFound", f"Amazon SageMaker can't find a {entity} with {key} {value}.")


def invalid(message: str) -> AwsError:
    return AwsError("ValidationException", message)


def association_key(source_arn: str, destination_arn: str) -> str:
    return f"{source_arn} {destination_arn}"  # ARNs hold no spaces


def lineage_page(
    items: list[Resource], params: dict[str, Any], name_key: str, **options: Any
) -> tuple[list[Resource], str | None]:
    """Lineage lists filter on CreatedAfter/CreatedBefore and page 10 at a time by default."""
    common = {
        **params,
        "CreationTimeAfter": params.get("CreatedAfter"),
        "CreationTimeBefore": params.get("CreatedBefore"),
        "MaxResults": params.get("MaxResults", DEFAULT_PAGE_SIZE),
    }
    return list_page(items, common, name_key=name_key, **options)


def with_source_uri(items: list[Resource], params: dict[str, Any], type_key: str) -> list[Resource]:
    if uri := params.get("SourceUri"):
        items = [i for i in items if i["Source"]["SourceUri"] == uri]
    if entity_type := params.get(type_key):
        items = [i for i in items if i.get(type_key) == entity_type]
    return items


def edit_properties(entity: Resource, params: dict[str, Any]) -> None:
    properties = {**entity.get("Properties", {}), **params.get("Properties", {})}
    for key in params.get("PropertiesToRemove", []):
        properties.pop(key, None)
    entity["Properties"] = properties


# -- entities, including those SageMaker creates for other resources -------------------------
def new_artifact(ctx: RequestContext, params: dict[str, Any]) -> Resource:
    created = now()
    artifact = {
        "ArtifactArn": ctx.arn("sagemaker", f"artifact/{uuid.uuid4().hex}"),
        "Source": params["Source"],
        "ArtifactType": params["ArtifactType"],
        "CreationTime": created,
        "CreatedBy": {},
        "LastModifiedTime": created,
        "LastModifiedBy": {},
    }
    return artifact | pick(params, "ArtifactName", "Properties", "MetadataProperties")


def new_context(ctx: RequestContext, params: dict[str, Any]) -> Resource:
    created = now()
    context = {
        "ContextName": params["ContextName"],
        "ContextArn": sagemaker_arn(ctx, "context", params["ContextName"]),
        "Source": params["Source"],
        "ContextType": params["ContextType"],
        "CreationTime": created,
        "CreatedBy": {},
        "LastModifiedTime": created,
        "LastModifiedBy": {},
    }
    return context | pick(params, "Description", "Properties")


def track_artifact(store: Store, ctx: RequestContext, source_uri: str, artifact_type: str) -> str:
    """The ARN of the artifact SageMaker keeps for `source_uri` (one per URI and type)."""
    with store.transaction():
        for artifact in store.list(ARTIFACT):
            if artifact["Source"]["SourceUri"] == source_uri and artifact["ArtifactType"] == artifact_type:
                return artifact["ArtifactArn"]
        artifact = new_artifact(ctx, {"Source": {"SourceUri": source_uri}, "ArtifactType": artifact_type})
        store.put(ARTIFACT, artifact["ArtifactArn"], artifact)
        return artifact["ArtifactArn"]


def track_context(
    store: Store, ctx: RequestContext, name_prefix: str, source_uri: str, context_type: str
) -> str:
    """The ARN of the context SageMaker keeps for `source_uri` (one per URI and type)."""
    with store.transaction():
        for context in store.list(CONTEXT):
            if context["Source"]["SourceUri"] == source_uri and context["ContextType"] == context_type:
                return context["ContextArn"]
        name = f"{name_prefix[:100]}-{uuid.uuid4().hex[:12]}"
        context = new_context(
            ctx, {"ContextName": name, "Source": {"SourceUri": source_uri}, "ContextType": context_type}
        )
        store.put(CONTEXT, context["ContextArn"], context)
        return context["ContextArn"]


def associate(store: Store, source_arn: str, destination_arn: str, association_type: str) -> None:
    """Add an association unless it exists (for entities SageMaker creates itself)."""
    association = {
        "SourceArn": source_arn,
        "DestinationArn": destination_arn,
        "AssociationType": association_type,
        "CreationTime": now(),
        "CreatedBy": {},
    }
    store.insert(ASSOCIATION, association_key(source_arn, destination_arn), association)


def lineage_end(store: Store, arn: str) -> tuple[str, str] | None:
    """(type, name) of an association end, None when it does not exist."""
    resource = arn.split(":", 5)[-1]
    kind, _, identifier = resource.partition("/")
    if kind == ARTIFACT and (artifact := store.get(ARTIFACT, arn)):
        return artifact["ArtifactType"], artifact.get("ArtifactName", "")
    if kind == CONTEXT and (context := store.get(CONTEXT, arn)):
        return context["ContextType"], context["ContextName"]
    if kind == ACTION and (action := store.get(ACTION, arn)):
        return action["ActionType"], action["ActionName"]
    if kind == "experiment-trial-component":
        for suffix, (job_kind, name_key, component_type) in JOB_TRIAL_COMPONENTS.items():
            job_name = identifier.removesuffix(suffix)
            # Trial component names hold the job name lower-cased.
            if job_name != identifier and any(j[name_key].lower() == job_name for j in store.list(job_kind)):
                return component_type, identifier
    return None


class LineageOperations:
    cloud: LocalCloud

    # -- contexts --------------------------------------------------------------------------
    def create_context(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        context = new_context(ctx, params)
        if not self.cloud.store.insert(CONTEXT, context["ContextArn"], context):
            raise invalid(f"Context {context['ContextArn']} already exists.")
        save_tags(self.cloud.store, context["ContextArn"], params.get("Tags"))
        return {"ContextArn": context["ContextArn"]}

    def describe_context(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._lineage_entity(CONTEXT, "Context", params["ContextName"], ctx)

    def list_contexts(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        contexts = with_source_uri(self.cloud.store.list(CONTEXT), params, "ContextType")
        page, token = lineage_page(contexts, params, "ContextName")
        keys = ("ContextArn", "ContextName", "Source", "ContextType", "CreationTime", "LastModifiedTime")
        return {"ContextSummaries": [pick(c, *keys) for c in page], **({"NextToken": token} if token else {})}

    def update_context(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        def change(context: Resource) -> None:
            context.update(pick(params, "Description"))
            edit_properties(context, params)
            context["LastModifiedTime"] = now()

        return {
            "ContextArn": self._update_lineage_entity(CONTEXT, "Context", params["ContextName"], ctx, change)
        }

    def delete_context(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        context = self._lineage_entity(CONTEXT, "Context", params["ContextName"], ctx)
        self._delete_lineage_entity(CONTEXT, context["ContextArn"])
        return {"ContextArn": context["ContextArn"]}

    # -- artifacts -------------------------------------------------------------------------
    def create_artifact(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        artifact = new_artifact(ctx, params)
        with store.transaction():
            self._check_artifact_name(params.get("ArtifactName"))
            store.put(ARTIFACT, artifact["ArtifactArn"], artifact)
            save_tags(store, artifact["ArtifactArn"], params.get("Tags"))
        return {"ArtifactArn": artifact["ArtifactArn"]}

    def describe_artifact(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        artifact = self.cloud.store.get(ARTIFACT, params["ArtifactArn"])
        if artifact is None:
            raise lineage_not_found("Artifact", "arn", params["ArtifactArn"])
        return artifact

    def list_artifacts(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        artifacts = with_source_uri(self.cloud.store.list(ARTIFACT), params, "ArtifactType")
        page, token = lineage_page(artifacts, params, "ArtifactName")
        keys = ("ArtifactArn", "ArtifactName", "Source", "ArtifactType", "CreationTime", "LastModifiedTime")
        return {
            "ArtifactSummaries": [pick(a, *keys) for a in page],
            **({"NextToken": token} if token else {}),
        }

    def update_artifact(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        with store.transaction():
            artifact = self.describe_artifact(params, ctx)
            if params.get("ArtifactName", artifact.get("ArtifactName")) != artifact.get("ArtifactName"):
                self._check_artifact_name(params["ArtifactName"])
            artifact.update(pick(params, "ArtifactName"))
            edit_properties(artifact, params)
            artifact["LastModifiedTime"] = now()
            store.put(ARTIFACT, artifact["ArtifactArn"], artifact)
        return {"ArtifactArn": artifact["ArtifactArn"]}

    def delete_artifact(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        if "ArtifactArn" in params:
            arn = self.describe_artifact(params, ctx)["ArtifactArn"]
        elif "Source" in params:
            arn = self._artifact_from_source(params["Source"])
        else:
            raise invalid("Either ArtifactArn or Source must be specified.")
        self._delete_lineage_entity(ARTIFACT, arn)
        return {"ArtifactArn": arn}

    # -- actions ---------------------------------------------------------------------------
    def create_action(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        created = now()
        action = {
            "ActionName": params["ActionName"],
            "ActionArn": sagemaker_arn(ctx, "action", params["ActionName"]),
            "Source": params["Source"],
            "ActionType": params["ActionType"],
            "CreationTime": created,
            "CreatedBy": {},
            "LastModifiedTime": created,
            "LastModifiedBy": {},
        } | pick(params, "Description", "Status", "Properties", "MetadataProperties")
        if not self.cloud.store.insert(ACTION, action["ActionArn"], action):
            raise invalid(f"Action {action['ActionArn']} already exists.")
        save_tags(self.cloud.store, action["ActionArn"], params.get("Tags"))
        return {"ActionArn": action["ActionArn"]}

    def describe_action(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._lineage_entity(ACTION, "Action", params["ActionName"], ctx)

    def list_actions(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        actions = with_source_uri(self.cloud.store.list(ACTION), params, "ActionType")
        page, token = lineage_page(actions, params, "ActionName")
        keys = (
            "ActionArn",
            "ActionName",
            "Source",
            "ActionType",
            "Status",
            "CreationTime",
            "LastModifiedTime",
        )
        return {"ActionSummaries": [pick(a, *keys) for a in page], **({"NextToken": token} if token else {})}

    def update_action(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        def change(action: Resource) -> None:
            action.update(pick(params, "Description", "Status"))
            edit_properties(action, params)
            action["LastModifiedTime"] = now()

        return {"ActionArn": self._update_lineage_entity(ACTION, "Action", params["ActionName"], ctx, change)}

    def delete_action(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        action = self._lineage_entity(ACTION, "Action", params["ActionName"], ctx)
        self._delete_lineage_entity(ACTION, action["ActionArn"])
        return {"ActionArn": action["ActionArn"]}

    # -- associations ----------------------------------------------------------------------
    def add_association(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        source, destination = params["SourceArn"], params["DestinationArn"]
        with store.transaction():
            for arn in (source, destination):
                if lineage_end(store, arn) is None:
                    raise lineage_not_found("lineage entity", "arn", arn)
            association = {
                "SourceArn": source,
                "DestinationArn": destination,
                "CreationTime": now(),
                "CreatedBy": {},
            }
            association |= pick(params, "AssociationType")
            if not store.insert(ASSOCIATION, association_key(source, destination), association):
                raise invalid(f"Association between {source} and {destination} already exists.")
        return {"SourceArn": source, "DestinationArn": destination}

    def list_associations(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        associations = store.list(ASSOCIATION)
        for key in ("SourceArn", "DestinationArn", "AssociationType"):
            if key in params:
                associations = [a for a in associations if a.get(key) == params[key]]
        summaries = []
        for association in associations:
            # Types and names are read now: entities may have been renamed since.
            summary = dict(association)
            for end in ("Source", "Destination"):
                if found := lineage_end(store, association[f"{end}Arn"]):
                    summary[f"{end}Type"] = found[0]
                    if found[1]:
                        summary[f"{end}Name"] = found[1]
            summaries.append(summary)
        for key in ("SourceType", "DestinationType"):
            if key in params:
                summaries = [s for s in summaries if s.get(key) == params[key]]
        sort_keys = {
            key: (lambda s, key=key: s.get(key))
            for key in ("SourceArn", "DestinationArn", "SourceType", "DestinationType")
        }
        page, token = lineage_page(summaries, params, "SourceArn", sort_keys=sort_keys)
        return {"AssociationSummaries": page, **({"NextToken": token} if token else {})}

    def delete_association(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        source, destination = params["SourceArn"], params["DestinationArn"]
        if not self.cloud.store.delete(ASSOCIATION, association_key(source, destination)):
            raise lineage_not_found("Association", "source and destination", f"{source} {destination}")
        return {"SourceArn": source, "DestinationArn": destination}

    # -- shared ----------------------------------------------------------------------------
    def _lineage_entity(self, kind: str, entity: str, name_or_arn: str, ctx: RequestContext) -> Resource:
        arn = name_or_arn if name_or_arn.startswith("arn:") else sagemaker_arn(ctx, kind, name_or_arn)
        found = self.cloud.store.get(kind, arn)
        if found is None:
            raise lineage_not_found(entity, "name", name_or_arn)
        return found

    def _update_lineage_entity(
        self, kind: str, entity: str, name: str, ctx: RequestContext, change: Callable[[Resource], None]
    ) -> str:
        """Apply `change` to a context or action; its ARN."""
        store = self.cloud.store
        with store.transaction():
            found = self._lineage_entity(kind, entity, name, ctx)
            change(found)
            store.put(kind, found[f"{entity}Arn"], found)
        return found[f"{entity}Arn"]

    def _delete_lineage_entity(self, kind: str, arn: str) -> None:
        # SageMaker keeps the graph whole: an entity goes only once its associations are gone.
        store = self.cloud.store
        with store.transaction():
            linked = [a for a in store.list(ASSOCIATION) if arn in (a["SourceArn"], a["DestinationArn"])]
            if linked:
                raise invalid(
                    f"{arn} has {len(linked)} association(s); "
                    "delete them (DeleteAssociation) before deleting it."
                )
            store.delete(kind, arn)
            store.delete(TAGS, arn)

    def _check_artifact_name(self, name: str | None) -> None:
        if name and any(a.get("ArtifactName") == name for a in self.cloud.store.list(ARTIFACT)):
            raise invalid(f"Artifact with name {name} already exists.")

    def _artifact_from_source(self, source: dict[str, Any]) -> str:
        matches = [
            a
            for a in self.cloud.store.list(ARTIFACT)
            if a["Source"]["SourceUri"] == source["SourceUri"]
            and ("SourceTypes" not in source or a["Source"].get("SourceTypes") == source["SourceTypes"])
        ]
        if not matches:
            raise lineage_not_found("Artifact", "source", source["SourceUri"])
        if len(matches) > 1:
            raise invalid(
                f"{len(matches)} artifacts have source {source['SourceUri']}; give the ArtifactArn."
            )
        return matches[0]["ArtifactArn"]
