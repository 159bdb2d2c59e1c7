"""Which failures a retry can mend. What fails the same way every time fails its task at once:
invalid params, a job's bad input or request (SageMaker's "ClientError: ..." FailureReason), an
API's validation error. Anything else may pass next time (throttling, a lost connection, a job
interrupted by a restart of the cloud) and gets the task's retries."""

from __future__ import annotations

import re
from typing import Any

from airflow.sdk import RetryDecision, RetryPolicy
from botocore.exceptions import ClientError

from include.pipeline.decisions import InvalidParams

# AWS error codes of a request that is wrong as sent: the same request fails again.
INVALID_REQUEST_CODES = frozenset({"ValidationException", "ValidationError", "InvalidRequestException"})
# A SageMaker job's FailureReason for its input or request, as the provider's operators quote it
# ("SageMaker job failed because ClientError: ...", "... Reason: ClientError: ...", or a deferred
# job's event {"message": "ClientError: ..."}).
JOB_CLIENT_ERROR = re.compile(r"(?:because |Reason: |'message': ')ClientError: ")


def deterministic_failure(exception: BaseException) -> str | None:
    """Why `exception` (or an exception it was raised from) will happen again; None if it may not."""
    seen: set[int] = set()
    current: BaseException | None = exception
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, InvalidParams):
            return "invalid params"
        if isinstance(current, ClientError):
            code = current.response.get("Error", {}).get("Code", "")
            if code in INVALID_REQUEST_CODES:
                return f"the request was refused: {code}"
        elif JOB_CLIENT_ERROR.search(str(current)):
            return "the job failed on its input or request (ClientError)"
        current = current.__cause__ or current.__context__
    return None


class DeterministicFailuresFailAtOnce(RetryPolicy):
    """A task's retries only for failures that may pass next time."""

    def evaluate(self, exception: BaseException, try_number: int, max_tries: int,
                 context: Any = None) -> RetryDecision:
        reason = deterministic_failure(exception)
        if reason is not None:
            return RetryDecision.fail(f"Not retried: {reason}, which fails the same way every time")
        return RetryDecision.default()
