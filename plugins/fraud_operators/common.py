"""Helpers shared by the operators."""

from __future__ import annotations

import json
from typing import Any


def jsonable(response: dict[str, Any]) -> dict[str, Any]:
    """A boto3 response without its metadata and with datetimes as strings, fit for XCom."""
    body = {key: value for key, value in response.items() if key != "ResponseMetadata"}
    return json.loads(json.dumps(body, default=str))
