"""`K_CE_OVERRIDES`: the extensions a SinkBinding asks every emitted CloudEvent to carry.

One parser for the functions and the step runtime, so both accept and refuse the same documents. An
override may only add extensions: a core attribute (`id`, `type`, `source`, ...) or one of xpipe's own
routing extensions would replace what the emitter sets (a fixed `id` would make the broker deduplicate
every heart-beat but the first), so those names are refused when the process starts, with an error
naming the variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from xpipe.event_names import EXT_JOB, EXT_STEP

VARIABLE = "K_CE_OVERRIDES"
# CloudEvents 1.0: attribute names MUST be lower-case ASCII letters or digits (and SHOULD NOT exceed 20
# characters, a recommendation this parser does not enforce).
EXTENSION_NAME = re.compile(r"[a-z0-9]+")
# The context attributes of CloudEvents 1.0 (and `data`, which names the payload in structured mode).
CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data"}
)
# Extensions xpipe sets on its own events, which Triggers route by.
XPIPE_EXTENSIONS = frozenset({EXT_JOB, EXT_STEP})


class InvalidCeOverrides(ValueError):
    """`K_CE_OVERRIDES` is not usable; the message names the variable and what is wrong."""


def parse_ce_overrides(raw: str | None) -> dict[str, str]:
    """`{"extensions": {"name": "value"}}` as a flat extension map; empty or unset means none."""
    if raw is None or not raw.strip():
        return {}
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidCeOverrides(f"{VARIABLE} is not JSON") from None
    extensions = document.get("extensions", {}) if isinstance(document, dict) else None
    if not isinstance(extensions, dict):
        raise InvalidCeOverrides(f'{VARIABLE} must look like {{"extensions": {{"name": "value"}}}}')
    return check_extensions(extensions)


def check_extensions(extensions: Mapping[str, object]) -> dict[str, str]:
    """The extensions, if every name is a valid, non-reserved extension name and every value a string."""
    for name, value in extensions.items():
        if not EXTENSION_NAME.fullmatch(name):
            raise InvalidCeOverrides(
                f"{VARIABLE}: extension name {name!r} must be lower-case letters and digits only"
            )
        if name in CORE_ATTRIBUTES:
            raise InvalidCeOverrides(
                f"{VARIABLE}: {name!r} is a core CloudEvents attribute, not an extension"
            )
        if name in XPIPE_EXTENSIONS:
            raise InvalidCeOverrides(f"{VARIABLE}: {name!r} is set by xpipe itself and cannot be overridden")
        if not isinstance(value, str):
            raise InvalidCeOverrides(
                f"{VARIABLE}: extension {name!r} must have a string value, got {type(value).__name__}"
            )
    return {name: str(value) for name, value in extensions.items()}
