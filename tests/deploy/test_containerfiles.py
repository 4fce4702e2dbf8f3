"""The Containerfiles of the function image and the step runtime image.

No container engine runs here, so what can be checked without one is: the base is pinned, compilers stay
in the builder stage, the runtime pins are installed as frozen, every COPY source exists inside the build
context, the user is not root, and the function image's command serves the function named by
FUNCTION_TARGET/FUNCTION_SOURCE on PORT (run from this venv, with the image's own environment).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .rendering import REPO

FUNCTION_IMAGE = REPO / "Containerfile"
STEP_IMAGE = REPO / "Containerfile.step"
CONTAINERFILES = {"Containerfile": FUNCTION_IMAGE, "Containerfile.step": STEP_IMAGE}
FIXTURE_FUNCTION = Path(__file__).with_name("fixtures") / "hello_function.py"
FIXTURE_BODY = "xpipe-image-command-ok"
SERVER_START_DEADLINE_S = 20.0
SERVER_STOP_DEADLINE_S = 10.0
COMPILERS = ("build-essential", "gcc", "g++", "make", "clang", "apt-get install")
_PINNED_PYTHON = re.compile(
    r"^(docker\.io/library/)?python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Containerfile (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            image = words[0]
            for name, value in global_args.items():
                image = image.replace(f"${{{name}}}", value).replace(f"${name}", value)
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=image, name=alias))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may precede the first FROM"
            name, _, value = args.partition("=")
            global_args[name] = value
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return global_args, stages


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether a context path is excluded by .containerignore patterns (last matching pattern wins)."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.rstrip("/")
        if body.startswith("**/"):
            tail = body[3:]
            hit = any(fnmatch.fnmatch(part, tail) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(candidate, body) for candidate in candidates)
        if hit:
            excluded = not negated
    return excluded


def ignore_patterns() -> list[str]:
    lines = (REPO / ".containerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# --- static checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_every_stage_uses_the_same_pinned_python_base(name: str) -> None:
    _, stages = parse(CONTAINERFILES[name])
    bases = {stage.base for stage in stages}
    assert len(bases) == 1, f"builder and runtime must share one base (the venv is copied): {bases}"
    (base,) = bases
    assert _PINNED_PYTHON.match(base), f"{base} is not an exact python 3.11 patch release (or digest)"


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_compilers_stay_in_the_builder_stage(name: str) -> None:
    _, stages = parse(CONTAINERFILES[name])
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    builder, runtime = stages[0], stages[-1]
    assert builder.name == "builder"
    assert any("build-essential" in run for run in builder.args_of("RUN"))
    for run in runtime.args_of("RUN"):
        for tool in COMPILERS:
            assert tool not in run, f"the runtime stage installs {tool!r}: {run}"
    for copy in runtime.args_of("COPY"):
        if copy.startswith("--from="):
            assert copy.split()[1:] == ["/opt/xpipe", "/opt/xpipe"], f"only the venv crosses stages: {copy}"


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_installs_exactly_the_runtime_pins_and_the_pinned_build_backend(name: str) -> None:
    _, stages = parse(CONTAINERFILES[name])
    runs = " && ".join(stages[0].args_of("RUN"))
    assert "pip install --no-deps -r requirements.txt" in runs, "the frozen runtime set, nothing resolved"
    assert "pip check" in runs
    dev_pins = dict(
        line.split("==", 1)
        for line in (REPO / "requirements-dev.txt").read_text().splitlines()
        if "==" in line
    )
    for package in ("setuptools", "wheel"):
        assert f"{package}=={dev_pins[package]}" in runs, f"{package} must be the requirements-dev.txt pin"


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_copy_sources_exist_inside_the_build_context(name: str) -> None:
    _, stages = parse(CONTAINERFILES[name])
    patterns = ignore_patterns()
    copied = 0
    for stage in stages:
        for copy in stage.args_of("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _destination = shlex.split(copy)
            for source in sources:
                path = REPO / source
                assert path.exists(), f"{name}: COPY {source} does not exist"
                assert not ignored(source, patterns), f"{name}: COPY {source} is excluded by .containerignore"
                copied += 1
    assert copied >= 4


def test_build_context_keeps_out_the_venv_git_tests_and_secrets() -> None:
    patterns = ignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/deploy/test_containerfiles.py",
        "knative/base/platform/secrets/tokens.yaml",
        ".xpipe/journal/segment-000001",
        "xpipe/__pycache__/events.cpython-311.pyc",
        "functions/submit/func.yaml",
    ):
        assert ignored(path, patterns), f"{path} would enter the build context"
    for path in ("xpipe/templates/demo-ok.yaml", "vms_adapter/protocol.py", "functions/submit/main.py"):
        assert not ignored(path, patterns), f"{path} is needed in the image"


def test_dockerignore_is_the_containerignore() -> None:
    assert (REPO / ".dockerignore").read_text() == (REPO / ".containerignore").read_text()


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_runtime_stage_runs_as_a_non_root_user(name: str) -> None:
    _, stages = parse(CONTAINERFILES[name])
    runtime = stages[-1]
    users = runtime.args_of("USER")
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    assert any(f"--uid {uid}" in run for run in runtime.args_of("RUN")), "the user is created in the image"


def _env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args_of("ENV"):
        for word in shlex.split(args):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def test_function_image_runs_functions_framework_on_port() -> None:
    _, stages = parse(FUNCTION_IMAGE)
    runtime = stages[-1]
    (cmd,) = runtime.args_of("CMD")
    argv = json.loads(cmd)  # exec form: signals reach the server directly
    assert argv[0] == "functions-framework"
    assert "--port" not in argv, "the port comes from PORT, which Knative sets"
    env = _env_of(runtime)
    assert env["PORT"] == "8080"
    assert env["FUNCTION_TARGET"] == "handle"
    assert env["FUNCTION_SIGNATURE_TYPE"] == "http"
    assert "DEBUG" not in env
    assert runtime.args_of("EXPOSE") == ["8080"]


def test_step_image_enters_the_step_runtime() -> None:
    _, stages = parse(STEP_IMAGE)
    runtime = stages[-1]
    (entrypoint,) = runtime.args_of("ENTRYPOINT")
    assert json.loads(entrypoint) == ["xpipe-step"]
    assert _env_of(runtime)["PORT"] == "8080"
    assert (REPO / "xpipe" / "step" / "__main__.py").is_file()


# --- the function image's command, run ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_function_image_command_serves_the_configured_function_on_port() -> None:
    """The image's CMD with the image's ENV, FUNCTION_SOURCE set as the Services set it and PORT as
    Knative sets it: the named function answers on that port."""
    _, stages = parse(FUNCTION_IMAGE)
    runtime = stages[-1]
    argv = json.loads(runtime.args_of("CMD")[0])
    port = _free_port()
    venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin")
    env = {key: value for key, value in os.environ.items() if key not in ("DEBUG", "FUNCTION_SOURCE")}
    env.update({k: v for k, v in _env_of(runtime).items() if not k.startswith("PATH")})
    env.update(
        {
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "FUNCTION_SOURCE": str(FIXTURE_FUNCTION),
            "WORKERS": "1",
            "THREADS": "2",
        }
    )
    server = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_DEADLINE_S
        answer = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0)
                break
            except httpx.TransportError:
                time.sleep(0.05)  # polling interval while the server binds; the deadline bounds the wait
        assert answer is not None, f"no answer on PORT={port} within {SERVER_START_DEADLINE_S} s"
        assert answer.status_code == 200
        assert answer.text == FIXTURE_BODY
    finally:
        server.terminate()
        try:
            server.wait(timeout=SERVER_STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=SERVER_STOP_DEADLINE_S)
        if server.stdout is not None:
            server.stdout.close()
