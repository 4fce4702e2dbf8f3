"""Parameter placeholders in step argv elements and env values: `{{ params.NAME }}`.

One step service is shared by every job of its template, so its argv and env are stored with the
placeholders left in, and the step runtime renders them for each run from `step.run`'s `params`.
Template validation uses the same functions, so what validates is exactly what runs.

Rendering is a single textual substitution inside one argv element (or one env value): the result is
never split, never re-scanned for placeholders and never handed to a shell, so a value such as
`; rm -rf /` reaches the command as one literal argument.

Only text that starts like a placeholder (`{{ params.`) is treated as one; any other `{{` (a Go
template for `kubectl -o go-template`, say) passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "MalformedPlaceholder",
    "MissingParam",
    "ParamError",
    "format_value",
    "leading_placeholder",
    "placeholders",
    "render",
    "render_argv",
    "render_env",
]

NAME_PATTERN = r"[a-zA-Z_][a-zA-Z0-9_]*"
_PLACEHOLDER = re.compile(r"\{\{\s*params\.(" + NAME_PATTERN + r")\s*\}\}")
# Anything that starts like a placeholder; each match must also be a whole _PLACEHOLDER.
_PLACEHOLDER_START = re.compile(r"\{\{\s*params\b")

ParamScalar = str | int | float | bool


class ParamError(ValueError):
    """A placeholder could not be rendered; nothing was run."""


class MissingParam(ParamError):
    """The text names a parameter the run did not supply."""

    def __init__(self, name: str) -> None:
        super().__init__(f"parameter {name!r} is referenced as {{{{ params.{name} }}}} but was not supplied")
        self.name = name


class MalformedPlaceholder(ParamError):
    """Text that starts like `{{ params.` is not a well-formed `{{ params.NAME }}`."""

    def __init__(self, text: str, position: int) -> None:
        fragment = text[position : position + 40]
        super().__init__(
            f"malformed placeholder at character {position}: {fragment!r} "
            f"(expected '{{{{ params.NAME }}}}' with NAME matching {NAME_PATTERN})"
        )
        self.position = position


def _check_syntax(text: str) -> None:
    for start in _PLACEHOLDER_START.finditer(text):
        if not _PLACEHOLDER.match(text, start.start()):
            raise MalformedPlaceholder(text, start.start())


def placeholders(text: str) -> set[str]:
    """The parameter names `text` refers to; raises MalformedPlaceholder for a broken placeholder."""
    _check_syntax(text)
    return {match.group(1) for match in _PLACEHOLDER.finditer(text)}


def leading_placeholder(text: str) -> str | None:
    """The param whose placeholder opens `text` (its value becomes the first characters), or None.

    In an argv element that param decides whether the command sees an option (`--kubeconfig=...`).
    """
    _check_syntax(text)
    match = _PLACEHOLDER.match(text)
    return None if match is None else match.group(1)


def format_value(value: ParamScalar) -> str:
    """A param value as it appears in argv/env: booleans as `true`/`false`, numbers as Python prints them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(text: str, params: Mapping[str, ParamScalar]) -> str:
    """`text` with every `{{ params.NAME }}` replaced by the value of NAME (one pass, no re-scan)."""
    _check_syntax(text)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise MissingParam(name)
        return format_value(params[name])

    return _PLACEHOLDER.sub(substitute, text)


def render_argv(argv: Iterable[str], params: Mapping[str, ParamScalar]) -> list[str]:
    """Each argv element rendered on its own: one element in, exactly one element out."""
    return [render(element, params) for element in argv]


def render_env(env: Mapping[str, str], params: Mapping[str, ParamScalar]) -> dict[str, str]:
    """Env values rendered (names are never rendered: they are fixed by the template)."""
    return {name: render(value, params) for name, value in env.items()}
