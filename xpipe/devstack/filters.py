"""Trigger filters, compiled once at load time into predicates over a CloudEvent's attributes.

Two dialects, as in Knative: the legacy ``filter.attributes`` (exact match of every listed attribute; an
empty value matches anything) and the newer ``filters`` list (``exact``, ``prefix``, ``suffix``, ``all``,
``any``, ``not``; the list is a conjunction). When a Trigger has both, ``filters`` wins. ``cesql`` is refused
at load time rather than half-honoured. Filters see context attributes and extensions, never ``data``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from xpipe.devstack.errors import ManifestError

Attributes = Mapping[str, str]
Predicate = Callable[[Attributes], bool]

_STRING_DIALECTS = ("exact", "prefix", "suffix")


def _match_all(_: Attributes) -> bool:
    return True


def compile_legacy(attributes: Any, where: str) -> Predicate:
    """``filter.attributes``: every listed attribute equal (an empty value means any value)."""
    if attributes is None:
        return _match_all
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise ManifestError(where, "filter.attributes must map attribute names to strings")
    wanted = {name: value for name, value in attributes.items() if value != ""}

    def legacy(attrs: Attributes) -> bool:
        return all(attrs.get(name) == value for name, value in wanted.items())

    return legacy


def _string_map(body: Any, dialect: str, where: str) -> dict[str, str]:
    if not isinstance(body, dict) or not body:
        raise ManifestError(where, f"{dialect} must be a non-empty mapping of attribute names to strings")
    for name, value in body.items():
        if not isinstance(name, str) or not isinstance(value, str) or value == "":
            raise ManifestError(where, f"{dialect}: attribute {name!r} needs a non-empty string value")
    return dict(body)


def compile_dialect(expression: Any, where: str) -> Predicate:
    """One element of ``filters``: a mapping with exactly one dialect key."""
    if not isinstance(expression, dict) or len(expression) != 1:
        raise ManifestError(
            where, "a filter must be a mapping with exactly one of exact, prefix, suffix, all, any, not"
        )
    ((dialect, body),) = expression.items()
    if dialect in _STRING_DIALECTS:
        wanted = _string_map(body, dialect, where)
        if dialect == "exact":
            return lambda attrs: all(attrs.get(k) == v for k, v in wanted.items())
        if dialect == "prefix":
            return lambda attrs: all(attrs.get(k, "").startswith(v) and k in attrs for k, v in wanted.items())
        return lambda attrs: all(attrs.get(k, "").endswith(v) and k in attrs for k, v in wanted.items())
    if dialect in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise ManifestError(where, f"{dialect} must be a non-empty list of filters")
        parts = [compile_dialect(item, f"{where}.{dialect}[{i}]") for i, item in enumerate(body)]
        if dialect == "all":
            return lambda attrs: all(p(attrs) for p in parts)
        return lambda attrs: any(p(attrs) for p in parts)
    if dialect == "not":
        inner = compile_dialect(body, f"{where}.not")
        return lambda attrs: not inner(attrs)
    if dialect == "cesql":
        raise ManifestError(
            where,
            "the cesql filter dialect is not supported by the local router; "
            "use exact, prefix, suffix, all, any or not",
        )
    raise ManifestError(where, f"unknown filter dialect {dialect!r}")


def compile_trigger_filter(spec: Mapping[str, Any], where: str) -> Predicate:
    """The predicate of a Trigger ``spec``: ``filters`` if present, else ``filter.attributes``."""
    if "filters" in spec:
        filters = spec["filters"]
        if not isinstance(filters, list):
            raise ManifestError(f"{where}.filters", "must be a list of filters")
        parts = [compile_dialect(item, f"{where}.filters[{i}]") for i, item in enumerate(filters)]
        return lambda attrs: all(p(attrs) for p in parts)
    legacy = spec.get("filter")
    if legacy is None:
        return _match_all
    if not isinstance(legacy, dict) or set(legacy) - {"attributes"}:
        raise ManifestError(f"{where}.filter", "only filter.attributes is known")
    return compile_legacy(legacy.get("attributes"), f"{where}.filter.attributes")
