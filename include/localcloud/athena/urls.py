"""Routes of Athena: JSON 1.1 requests with `X-Amz-Target: AmazonAthena.*`."""

from include.localcloud.athena.responses import AthenaResponse


def services() -> list[type]:
    return [AthenaResponse]
