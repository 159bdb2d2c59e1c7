"""Identity-policy evaluation: a request is allowed when some statement allows it and none denies
it. The documents come from moto's IAM (IAMPolicy reads a managed policy's default version or an
inline one); the statements are evaluated here, since moto 5.2.5's IAMPolicyStatement treats an
Allow whose condition fails as a Deny, knows only StringEquals, has no NotResource, matches
actions case-sensitively and reads the policy's '.' and '?' as regular-expression characters."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import Enum
from functools import lru_cache
from typing import Any

from moto.iam.access_control import IAMPolicy


class Decision(Enum):
    ALLOWED = "allowed"
    IMPLICIT_DENY = "no identity-based policy allows"
    EXPLICIT_DENY = "explicit deny"


def documents(policies: Iterable[Any]) -> list[dict[str, Any]]:
    """Policy documents as JSON, from what moto's collect_policies gives."""
    return [IAMPolicy(policy)._policy_json for policy in policies]


def evaluate(docs: Iterable[Mapping[str, Any]], action: str, resource: str, context: Mapping[str, str]) -> Decision:
    allowed = False
    for doc in docs:
        statements = doc.get("Statement", [])
        for statement in [statements] if isinstance(statements, dict) else statements:
            if not _applies(statement, action, resource, context):
                continue
            if statement.get("Effect") == "Deny":
                return Decision.EXPLICIT_DENY
            allowed = allowed or statement.get("Effect") == "Allow"
    return Decision.ALLOWED if allowed else Decision.IMPLICIT_DENY


def _applies(statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, str]) -> bool:
    if "NotAction" in statement:
        if any_match(statement["NotAction"], action, ignore_case=True):
            return False
    elif not any_match(statement.get("Action", []), action, ignore_case=True):
        return False
    if "NotResource" in statement:
        if any_match(statement["NotResource"], resource):
            return False
    elif not any_match(statement.get("Resource", []), resource):
        return False
    return all(_condition(operator, key, expected, context)
               for operator, tests in statement.get("Condition", {}).items()
               for key, expected in tests.items())


def any_match(patterns: str | list[str], value: str, ignore_case: bool = False) -> bool:
    """Does one of a statement's Action or Resource patterns (IAM wildcards) match `value`?"""
    return any(_wildcard(pattern, ignore_case).fullmatch(value) for pattern in as_list(patterns))


@lru_cache(maxsize=4096)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM's wildcards: * any run of characters, ? one character; everything else literal."""
    regex = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


def as_list(value: Any) -> list[Any]:
    """A statement element that may be one value or a list of them, as a list."""
    return value if isinstance(value, list) else [value]


_STRING_TESTS = {
    "StringEquals": lambda expected, actual: expected == actual,
    "StringEqualsIgnoreCase": lambda expected, actual: expected.lower() == actual.lower(),
    "StringLike": lambda expected, actual: _wildcard(expected, False).fullmatch(actual) is not None,
    "ArnEquals": lambda expected, actual: expected == actual,
    "ArnLike": lambda expected, actual: _wildcard(expected, False).fullmatch(actual) is not None,
    "Bool": lambda expected, actual: expected.lower() == actual.lower(),
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
            "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike"}


def _condition(operator: str, key: str, expected: Any, context: Mapping[str, str]) -> bool:
    """One condition key test. A key absent from the request fails a test, passes a negated one
    and passes ...IfExists; an operator we don't know fails, so that nothing is allowed by it."""
    operator = operator.split(":", 1)[-1]  # ForAnyValue: / ForAllValues: - our context is single-valued
    if_exists = operator.endswith("IfExists")
    operator = operator.removesuffix("IfExists")
    actual = next((value for name, value in context.items() if name.lower() == key.lower()), None)
    if operator == "Null":
        return (actual is None) == (str(expected).lower() == "true")
    negated = operator in _NEGATED
    test = _STRING_TESTS.get(_NEGATED.get(operator, operator))
    if test is None:
        return False
    if actual is None:
        return if_exists or negated
    matched = any(test(str(value), actual) for value in as_list(expected))
    return not matched if negated else matched
