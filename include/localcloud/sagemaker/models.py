"""Shared pieces of the SageMaker control plane's state: timestamps, ARNs, listing."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from include.localcloud.protocol import AwsError, RequestContext

Resource = dict[str, Any]


def now() -> float:
    """Timestamps are stored as epoch seconds, which is also how JSON 1.1 sends them."""
    return time.time()


def sagemaker_arn(ctx: RequestContext, kind: str, name: str) -> str:
    # SageMaker lower-cases names in ARNs (e.g. arn:aws:sagemaker:...:training-job/my-job).
    return ctx.arn("sagemaker", f"{kind}/{name.lower()}")


def region_of(arn: str) -> str:
    return arn.split(":")[3]


def image_repository(image_uri: str) -> str:
    """"sagemaker-xgboost" from "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1":
    the local cloud picks a job runner or model server by it, whatever the region or account."""
    path = image_uri.split("/", 1)[-1]
    return re.split(r"[:@]", path, maxsplit=1)[0]


XGBOOST_IMAGE = "sagemaker-xgboost"
CLARIFY_IMAGE = "sagemaker-clarify-processing"


def already_exists(kind: str, identifier: str) -> AwsError:
    return AwsError("ValidationException", f"Cannot create already existing {kind} \"{identifier}\".")


def list_page(
    items: list[Resource],
    params: dict[str, Any],
    *,
    name_key: str,
    time_key: str = "CreationTime",
    status_key: str | None = None,
    default_sort: str = "CreationTime",
    default_order: str = "Descending",
    sort_keys: dict[str, Callable[[Resource], Any]] | None = None,
) -> tuple[list[Resource], str | None]:
    """Filter, sort and page a list the way SageMaker's List* calls do: NameContains,
    CreationTimeAfter/Before, StatusEquals, SortBy/SortOrder, MaxResults/NextToken.
    `sort_keys` reads the sort key of an item for SortBy values beyond the common ones."""
    if contains := params.get("NameContains"):
        items = [i for i in items if contains.lower() in str(i.get(name_key, "")).lower()]
    if (after := params.get("CreationTimeAfter")) is not None:
        items = [i for i in items if i[time_key] > float(after)]
    if (before := params.get("CreationTimeBefore")) is not None:
        items = [i for i in items if i[time_key] < float(before)]
    if status_key and (status := params.get("StatusEquals")):
        items = [i for i in items if i.get(status_key) == status]
    sort_by = params.get("SortBy", default_sort)
    key = {"Name": name_key, "CreationTime": time_key, "CreationTimeAscending": time_key,
           "Status": status_key or time_key}.get(sort_by, time_key)
    read = (sort_keys or {}).get(sort_by) or (lambda i: i.get(key))
    descending = params.get("SortOrder", default_order) == "Descending"
    items = sorted(items, key=lambda i: (read(i) is None, read(i)), reverse=descending)
    try:
        start = int(params.get("NextToken") or 0)
    except ValueError as exc:
        raise AwsError("ValidationException", "Invalid pagination token.") from exc
    size = int(params.get("MaxResults") or 100)
    page = items[start:start + size]
    token = str(start + size) if start + size < len(items) else None
    return page, token


def pick(resource: Resource, *keys: str) -> Resource:
    """A summary: the listed keys of a description, those present."""
    return {k: resource[k] for k in keys if k in resource}
