"""AddTags, ListTags and DeleteTags on any SageMaker ARN; tags given at creation land here too."""

from __future__ import annotations

from typing import Any

from include.localcloud.protocol import RequestContext
from include.localcloud.store import Store

TAGS = "tags"


def save_tags(store: Store, arn: str, tags: list[dict[str, str]] | None) -> None:
    if not tags:
        return
    with store.transaction():
        current = {t["Key"]: t["Value"] for t in (store.get(TAGS, arn) or {}).get("Tags", [])}
        current.update({t["Key"]: t.get("Value", "") for t in tags})
        store.put(TAGS, arn, {"Tags": [{"Key": k, "Value": v} for k, v in current.items()]})


def tags_of(store: Store, arn: str) -> list[dict[str, str]]:
    return (store.get(TAGS, arn) or {}).get("Tags", [])


class TagOperations:
    cloud: Any

    def add_tags(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        save_tags(self.cloud.store, params["ResourceArn"], params["Tags"])
        return {"Tags": tags_of(self.cloud.store, params["ResourceArn"])}

    def list_tags(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return {"Tags": tags_of(self.cloud.store, params["ResourceArn"])}

    def delete_tags(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        store = self.cloud.store
        with store.transaction():
            keep = [t for t in tags_of(store, params["ResourceArn"]) if t["Key"] not in params["TagKeys"]]
            store.put(TAGS, params["ResourceArn"], {"Tags": keep})
        return {}
