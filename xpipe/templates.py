"""Pipeline templates: the YAML schema, the catalog, parameter validation and job resolution.

A template is what a shop admin picks in Magento: named steps, each one command (an argv, never a shell
string) run as a scale-to-zero step service, plus what to do when a step fails for good. The catalog is
read once, at start-up, from ``XPIPE_TEMPLATES_DIR`` (a ConfigMap in the cluster; the built-in demo
templates by default) and validated completely then: a broken catalog stops the function from starting
with a message naming the file and the field, instead of failing the first submit that touches it.

Resolving a template with a submit's params yields the *plan* that submit stores in ``JOB_REGISTERED``
(so the journal decides without the catalog) and the step service specs the backend ensures. Params
reach a step only through ``{{ params.NAME }}`` placeholders in argv elements and env values, which the
step runtime substitutes element by element: a value such as ``; rm -rf /`` stays one literal argument.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic_core import CoreConfig, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from xpipe.backends.base import DEFAULT_HEARTBEAT_SECONDS, StepServiceSpec, step_service_name
from xpipe.config import BUILTIN_TEMPLATES_DIR
from xpipe.errors import CatalogError, InvalidParams, UnknownTemplate
from xpipe.params import format_value, leading_placeholder, placeholders
from xpipe.step.limits import MIN_TIMEOUT_SECONDS

# libyaml's safe loader when PyYAML was built with it (several times faster), else the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = [
    "BUILTIN_TEMPLATES_DIR",
    "Catalog",
    "ResolvedJob",
    "StepSpec",
    "Template",
    "heartbeat_interval",
    "resolve",
    "service_name",
    "validate_params",
]

TEMPLATE_FILE_MAX_BYTES = 256 * 1024
PARAM_VALUE_MAX_CHARS = 1024
# Tells a step's own service from its compensation's (both share template and step labels).
ROLE_LABEL = "xpipe.io/role"

DNS_LABEL = r"^[a-z]([a-z0-9-]*[a-z0-9])?$"
PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

ParamType = Literal["string", "integer", "number", "boolean"]
OnFailure = Literal["rollback", "diagnose", "rollback-and-diagnose", "none"]
RevertKind = Literal["knative-traffic"]


# The template classes are plain frozen dataclasses; the YAML schema they are read through is declared
# further down (_TEMPLATE) with pydantic-core, pydantic's validation engine. Declaring the
# schema directly, rather than as pydantic models, keeps `import pydantic` and its model building
# (about 60 ms of CPU, a third of submit's cold start) out of submit's start-up, while validation, its
# strict types and its error messages are pydantic's own.


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a submit may (or must) give."""

    type: ParamType = "string"
    description: str = ""
    required: bool = False
    default: str | int | float | bool | None = None
    pattern: str | None = None
    max_length: int = PARAM_VALUE_MAX_CHARS


@dataclass(frozen=True)
class BackoffSpec:
    """Wait ``seconds * factor**(attempt-1)`` before a retry."""

    seconds: float = 1.0
    factor: float = 2.0


@dataclass(frozen=True)
class HealthSpec:
    """How much bad pod health an attempt tolerates before the journal fails it."""

    not_ready_seconds: int = 60
    max_restarts: int = 3


@dataclass(frozen=True)
class CompensateSpec:
    """The command that undoes a succeeded step during a rollback (run as its own step service)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int = 300
    image: str | None = None


@dataclass(frozen=True)
class RevertSpec:
    """A Knative Service whose traffic is pinned back to its previous ready revision on rollback."""

    kind: RevertKind
    service: str
    namespace: str


@dataclass(frozen=True)
class StepSpec:
    """One step: a command run by the step runtime in its own scale-to-zero service."""

    name: str
    argv: list[str]
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int = 300
    retries: int = 0
    backoff: BackoffSpec = field(default_factory=BackoffSpec)
    heartbeat_timeout_seconds: int = 30
    health: HealthSpec = field(default_factory=HealthSpec)
    compensate: CompensateSpec | None = None
    revert: RevertSpec | None = None


@dataclass(frozen=True)
class Template:
    """A pipeline template as written in one YAML file of the catalog."""

    name: str
    steps: list[StepSpec]
    description: str = ""
    on_failure: OnFailure = "rollback"
    params: dict[str, ParamSpec] = field(default_factory=dict)
    # Param-independent parts of a resolution, per default image (computed once: submit's hot path).
    _layouts: dict[str, tuple[tuple[dict[str, Any], ...], tuple[StepServiceSpec, ...]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_document(cls, document: object) -> Template:
        """Validate a parsed YAML document against the schema; ``ValidationError`` names the field."""
        template = _TEMPLATE_VALIDATOR.validate_python(document)
        assert isinstance(template, Template)
        return template

    @cached_property
    def option_prone_params(self) -> frozenset[str]:
        """Params whose placeholder opens an argv element: a value there starting with ``-`` is an option."""
        argvs = [step.argv for step in self.steps]
        argvs += [step.compensate.argv for step in self.steps if step.compensate is not None]
        return frozenset(
            name for argv in argvs for element in argv if (name := leading_placeholder(element)) is not None
        )

    @cached_property
    def digest(self) -> str:
        """A stable digest of the parsed template: identifies the template version a job ran."""
        canonical = json.dumps(_document(self), sort_keys=True)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def layout(self, default_image: str) -> tuple[tuple[dict[str, Any], ...], tuple[StepServiceSpec, ...]]:
        """The plan's steps and the step services, which depend on the template only (shared: read-only)."""
        found = self._layouts.get(default_image)
        if found is None:
            found = _layout(self, default_image)
            self._layouts[default_image] = found
        return found


def _camel(name: str) -> str:
    """``timeout_seconds`` -> ``timeoutSeconds``: the key a template file uses for a field."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _document(value: object) -> object:
    """A template (or part of one) as its full JSON document: camelCase keys, defaults filled in."""
    if is_dataclass(value) and not isinstance(value, type):
        return {_camel(f.name): _document(getattr(value, f.name)) for f in fields(value) if f.init}
    if isinstance(value, dict):
        return {key: _document(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_document(item) for item in value]
    return value


# --- The YAML schema ---------------------------------------------------------------------------------

# Strict types as written in YAML ("3" is no integer); keys by their camelCase alias or field name.
_CONFIG = CoreConfig(strict=True, validate_by_alias=True, validate_by_name=True)


def _record(
    cls: type[Any], keys: dict[str, cs.CoreSchema], check: Callable[[Any], None] | None = None
) -> cs.CoreSchema:
    """A mapping of camelCase keys (snake_case accepted too), unknown keys refused, built into ``cls``.

    ``keys`` gives each field's schema, in the order they are checked; a field with a default in the
    dataclass may be left out. ``check`` runs on the built object; a ``ValueError`` it raises is
    reported at the mapping's place.
    """
    defaults = {f.name: f for f in fields(cls) if f.init}
    if set(keys) != set(defaults):  # a schema that misses a field of its class fails at import
        raise TypeError(f"{cls.__name__}: the schema's keys differ from the dataclass's fields")

    def entry(name: str, schema: cs.CoreSchema) -> cs.TypedDictField:
        declared = defaults[name]
        if declared.default is not MISSING:
            schema = cs.with_default_schema(schema, default=declared.default)
        elif declared.default_factory is not MISSING:
            schema = cs.with_default_schema(schema, default_factory=declared.default_factory)
        else:
            return cs.typed_dict_field(schema, validation_alias=_camel(name), required=True)
        return cs.typed_dict_field(schema, validation_alias=_camel(name), required=False)

    def build(data: dict[str, Any]) -> Any:
        built = cls(**data)
        if check is not None:
            check(built)
        return built

    return cs.no_info_after_validator_function(
        build,
        cs.typed_dict_schema(
            {name: entry(name, schema) for name, schema in keys.items()},
            extra_behavior="forbid",
            config=_CONFIG,  # a mapping's config, not the validator's, applies to its fields
        ),
    )


def _check(condition: Callable[[Any], str | None], schema: cs.CoreSchema) -> cs.CoreSchema:
    """``schema``, then ``condition`` on the value: a returned text is the error (a ``ValueError``)."""

    def run(value: Any) -> Any:
        problem = condition(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return cs.no_info_after_validator_function(run, schema)


def _pattern_problem(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            return f"not a valid regular expression: {exc}"
    return None


def _param_consistency(spec: ParamSpec) -> None:
    if spec.pattern is not None and spec.type != "string":
        raise ValueError("pattern applies to string params only")
    if spec.required and spec.default is not None:
        raise ValueError("a required param cannot have a default")
    if spec.default is not None:
        problem = _type_problem(spec, spec.default)
        if problem:
            raise ValueError(f"default {spec.default!r}: {problem}")


def _param_names_problem(value: dict[str, ParamSpec]) -> str | None:
    for name in value:
        if not re.fullmatch(PARAM_NAME, name):  # "$" alone would let a final newline through
            return f"param name {name!r} must match {PARAM_NAME}"
    return None


def _duplicate_step_problem(value: list[StepSpec]) -> str | None:
    seen: set[str] = set()
    for step in value:
        if step.name in seen:
            return f"step name {step.name!r} appears twice"
        seen.add(step.name)
    return None


_STR = cs.str_schema()
_DNS_NAME = cs.str_schema(pattern=DNS_LABEL, max_length=40)
_DNS_LABEL = cs.str_schema(pattern=DNS_LABEL, max_length=63)
_ARGV = cs.list_schema(_STR, min_length=1)
_ENV = cs.dict_schema(_STR, _STR)
_TIMEOUT = cs.int_schema(ge=MIN_TIMEOUT_SECONDS)
_IMAGE = cs.nullable_schema(_STR)

_PARAM = _record(
    ParamSpec,
    {
        "type": cs.literal_schema(list(get_args(ParamType))),
        "description": _STR,
        "required": cs.bool_schema(),
        "default": cs.nullable_schema(
            cs.union_schema([_STR, cs.int_schema(), cs.float_schema(), cs.bool_schema()])
        ),
        "pattern": _check(_pattern_problem, cs.nullable_schema(_STR)),
        "max_length": cs.int_schema(ge=1, le=PARAM_VALUE_MAX_CHARS),
    },
    check=_param_consistency,
)
_BACKOFF = _record(
    BackoffSpec, {"seconds": cs.float_schema(ge=0, le=3600), "factor": cs.float_schema(ge=1, le=10)}
)
_HEALTH = _record(
    HealthSpec,
    {"not_ready_seconds": cs.int_schema(ge=1, le=3600), "max_restarts": cs.int_schema(ge=0, le=100)},
)
_COMPENSATE = _record(
    CompensateSpec, {"argv": _ARGV, "env": _ENV, "timeout_seconds": _TIMEOUT, "image": _IMAGE}
)
_REVERT = _record(
    RevertSpec,
    {"kind": cs.literal_schema(list(get_args(RevertKind))), "service": _DNS_LABEL, "namespace": _DNS_LABEL},
)
_STEP = _record(
    StepSpec,
    {
        "name": _DNS_NAME,
        "image": _IMAGE,
        "argv": _ARGV,
        "env": _ENV,
        "timeout_seconds": _TIMEOUT,
        "retries": cs.int_schema(ge=0, le=10),
        "backoff": _BACKOFF,
        "heartbeat_timeout_seconds": cs.int_schema(ge=1, le=3600),
        "health": _HEALTH,
        "compensate": cs.nullable_schema(_COMPENSATE),
        "revert": cs.nullable_schema(_REVERT),
    },
)
_TEMPLATE = _record(
    Template,
    {
        "name": _DNS_NAME,
        "description": _STR,
        "on_failure": cs.literal_schema(list(get_args(OnFailure))),
        "params": _check(_param_names_problem, cs.dict_schema(_STR, _PARAM)),
        "steps": _check(_duplicate_step_problem, cs.list_schema(_STEP, min_length=1, max_length=32)),
    },
)
_TEMPLATE_VALIDATOR = SchemaValidator(_TEMPLATE, _CONFIG)


@dataclass(frozen=True)
class ResolvedJob:
    """A template resolved with a submit's params: the plan for the journal and the services to ensure."""

    plan: dict[str, Any]
    services: tuple[StepServiceSpec, ...]


def service_name(template: str, step: str, *, compensation: bool = False) -> str:
    """The deterministic DNS-1035 name (<= 49 chars) of a step's service, or of its compensation's.

    The backend's ``step_service_name`` does the naming; a compensation is the pseudo-step
    ``<step>-undo``. The catalog refuses, at start-up, the rare names that collide across templates.
    """
    return step_service_name(template, f"{step}-undo" if compensation else step)


def heartbeat_interval(heartbeat_timeout_seconds: int) -> float:
    """How often the runtime heart-beats: at least three beats fit in the lease, at most every 10 s."""
    return min(DEFAULT_HEARTBEAT_SECONDS, heartbeat_timeout_seconds / 3)


def _type_problem(spec: ParamSpec, value: object) -> str | None:
    """Why ``value`` does not fit ``spec`` (JSON types are strict: "3" is not an integer), or None."""
    if spec.type == "string":
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if len(value) > spec.max_length:
            return f"longer than {spec.max_length} characters"
        if "\x00" in value:
            return "contains a NUL character"
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            return f"does not match pattern {spec.pattern!r}"
        return None
    if spec.type == "boolean":
        return None if isinstance(value, bool) else f"must be a boolean, got {type(value).__name__}"
    if isinstance(value, bool):
        return f"must be {'an integer' if spec.type == 'integer' else 'a number'}, got bool"
    if spec.type == "integer":
        return None if isinstance(value, int) else f"must be an integer, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):  # NaN or inf has no place in argv
        return "must be a finite number"
    return None if isinstance(value, int | float) else f"must be a number, got {type(value).__name__}"


def _would_be_an_option(template: Template, name: str, spec: ParamSpec, value: object) -> bool:
    """Whether ``value`` of param ``name`` would turn into an option of a step's command.

    It would when it is a string starting with ``-`` and the param opens an argv element, unless the
    param has a ``pattern``: then the template author decided what is allowed. Numbers are exempt: a
    negative number cannot name an option such as ``--kubeconfig=...``.
    """
    return (
        isinstance(value, str)
        and value.startswith("-")
        and spec.pattern is None
        and name in template.option_prone_params
    )


def validate_params(template: Template, params: Mapping[str, object]) -> dict[str, str]:
    """Check a submit's params against the template; return every declared param as a string.

    Raises ``InvalidParams`` naming the first offending param: unknown, missing, mistyped, or a string
    starting with ``-`` where it would open an argv element (an option such as ``--kubeconfig=...``).
    """
    for name in params:
        if name not in template.params:
            raise InvalidParams(name, f"not a param of template {template.name!r}")
    resolved: dict[str, str] = {}
    for name, spec in template.params.items():
        if name not in params:
            if spec.required:
                raise InvalidParams(name, "required")
            resolved[name] = "" if spec.default is None else format_value(spec.default)
            continue
        value = params[name]
        problem = _type_problem(spec, value)
        if problem:
            raise InvalidParams(name, problem)
        if _would_be_an_option(template, name, spec, value):
            raise InvalidParams(
                name,
                "starts with '-', which the step's command would read as an option "
                "(the template may allow it by giving the param a pattern)",
            )
        assert isinstance(value, str | int | float | bool)
        resolved[name] = format_value(value)
    return resolved


def _layout(
    template: Template, default_image: str
) -> tuple[tuple[dict[str, Any], ...], tuple[StepServiceSpec, ...]]:
    digest = template.digest
    steps: list[dict[str, Any]] = []
    services: list[StepServiceSpec] = []
    for step in template.steps:
        name = service_name(template.name, step.name)
        services.append(
            StepServiceSpec(
                name=name,
                template=template.name,
                step=step.name,
                image=step.image or default_image,
                argv=tuple(step.argv),
                env=dict(step.env),
                timeout_seconds=step.timeout_seconds,
                template_digest=digest,
                heartbeat_seconds=heartbeat_interval(step.heartbeat_timeout_seconds),
                labels={ROLE_LABEL: "step"},
            )
        )
        compensate: dict[str, Any] | None = None
        if step.compensate is not None:
            undo = service_name(template.name, step.name, compensation=True)
            services.append(
                StepServiceSpec(
                    name=undo,
                    template=template.name,
                    step=step.name,
                    image=step.compensate.image or step.image or default_image,
                    argv=tuple(step.compensate.argv),
                    env=dict(step.compensate.env),
                    timeout_seconds=step.compensate.timeout_seconds,
                    template_digest=digest,
                    heartbeat_seconds=heartbeat_interval(step.heartbeat_timeout_seconds),
                    labels={ROLE_LABEL: "compensate"},
                )
            )
            compensate = {"service": undo, "timeoutSeconds": step.compensate.timeout_seconds}
        steps.append(
            {
                "name": step.name,
                "service": name,
                "timeoutSeconds": step.timeout_seconds,
                "retries": step.retries,
                "backoffSeconds": step.backoff.seconds,
                "backoffFactor": step.backoff.factor,
                "heartbeatTimeoutSeconds": step.heartbeat_timeout_seconds,
                "health": {
                    "notReadySeconds": step.health.not_ready_seconds,
                    "maxRestarts": step.health.max_restarts,
                },
                "compensate": compensate,
                "revert": _document(step.revert) if step.revert else None,
            }
        )
    return tuple(steps), tuple(services)


def resolve(
    template: Template, params: Mapping[str, object], *, requested_by: str, default_image: str
) -> ResolvedJob:
    """Validate ``params`` and produce the ``JOB_REGISTERED`` plan and the step services to ensure."""
    values = validate_params(template, params)
    steps, services = template.layout(default_image)
    plan = {
        "template": template.name,
        "templateDigest": template.digest,
        "params": values,
        "requestedBy": requested_by,
        "onFailure": template.on_failure,
        "steps": list(steps),  # shared, read-only step entries: the plan is only serialised
    }
    return ResolvedJob(plan=plan, services=services)


def _field_path(loc: Iterable[int | str]) -> str:
    """``("steps", 1, "timeoutSeconds")`` -> ``steps[1].timeoutSeconds``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class Catalog:
    """The templates a submit may name, loaded and validated as a whole at start-up."""

    def __init__(self, templates: Mapping[str, Template]) -> None:
        self._templates = dict(templates)

    def __contains__(self, name: object) -> bool:
        return name in self._templates

    def __len__(self) -> int:
        return len(self._templates)

    def names(self) -> list[str]:
        """The template names, sorted."""
        return sorted(self._templates)

    def get(self, name: str) -> Template:
        """The template called ``name``; ``UnknownTemplate`` (a 422) if there is none."""
        try:
            return self._templates[name]
        except KeyError:
            raise UnknownTemplate(name) from None

    @classmethod
    def load(cls, directory: Path, *, max_revision_timeout_seconds: int) -> Catalog:
        """Read and validate every ``*.yaml``/``*.yml`` file of ``directory``; ``CatalogError`` if any is bad.

        Besides the schema this checks what only the whole catalog or the cluster reveals: duplicate
        template names, step service names that collide across templates, placeholders naming
        undeclared params, and step time-outs above the cluster's revision time-out.
        """
        if not directory.is_dir():
            raise CatalogError(str(directory), "", "templates directory does not exist")
        files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise CatalogError(str(directory), "", "no template files (*.yaml) found")
        templates: dict[str, Template] = {}
        origin: dict[str, Path] = {}
        services: dict[str, str] = {}
        for path in files:
            template = _load_file(path, max_revision_timeout_seconds)
            if template.name in templates:
                raise CatalogError(
                    str(path),
                    "name",
                    f"template {template.name!r} is also defined in {origin[template.name]}",
                )
            for index, step in enumerate(template.steps):
                names = [service_name(template.name, step.name)]
                if step.compensate is not None:
                    names.append(service_name(template.name, step.name, compensation=True))
                for svc in names:
                    owner = f"{template.name}/{step.name}"
                    if svc in services:
                        raise CatalogError(
                            str(path),
                            f"steps[{index}].name",
                            f"step service name {svc!r} collides with {services[svc]}",
                        )
                    services[svc] = owner
            templates[template.name] = template
            origin[template.name] = path
        return cls(templates)


def _load_file(path: Path, max_revision_timeout_seconds: int) -> Template:
    """Parse and check one template file; every error names ``path`` and the offending field."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(where, "", f"cannot read: {exc.strerror}") from None
    if len(raw) > TEMPLATE_FILE_MAX_BYTES:
        raise CatalogError(where, "", f"larger than {TEMPLATE_FILE_MAX_BYTES} bytes")
    try:
        document = yaml.load(raw, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise CatalogError(where, "", f"not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise CatalogError(where, "", "a template file must hold one mapping")
    try:
        template = Template.from_document(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CatalogError(where, _field_path(first["loc"]), first["msg"]) from None
    for index, step in enumerate(template.steps):
        commands: list[tuple[str, list[str], dict[str, str], int]] = [
            (f"steps[{index}]", step.argv, step.env, step.timeout_seconds)
        ]
        if step.compensate is not None:
            commands.append(
                (
                    f"steps[{index}].compensate",
                    step.compensate.argv,
                    step.compensate.env,
                    step.compensate.timeout_seconds,
                )
            )
        for prefix, argv, env, timeout in commands:
            if timeout > max_revision_timeout_seconds:
                raise CatalogError(
                    where,
                    f"{prefix}.timeoutSeconds",
                    f"{timeout} s exceeds the cluster's max-revision-timeout-seconds "
                    f"({max_revision_timeout_seconds} s; XPIPE_MAX_REVISION_TIMEOUT_SECONDS)",
                )
            for key in env:
                if not re.fullmatch(ENV_NAME, key):
                    raise CatalogError(where, f"{prefix}.env.{key}", "not a valid environment variable name")
            texts = [(f"{prefix}.argv[{i}]", arg) for i, arg in enumerate(argv)]
            texts += [(f"{prefix}.env.{key}", value) for key, value in env.items()]
            for place, text in texts:
                try:
                    named = placeholders(text)
                except ValueError as exc:
                    raise CatalogError(where, place, str(exc)) from None
                for param in named:
                    if param not in template.params:
                        raise CatalogError(where, place, f"placeholder names undeclared param {param!r}")
    return template
