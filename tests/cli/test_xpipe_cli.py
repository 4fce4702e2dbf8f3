"""The ``xpipe`` command's own logic, without a running stack: params, settings, precise errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from rich.console import Console

from xpipe.cli import CliError, Settings, job_view, jobs_table, main, omissions_note, parse_params


def test_params_take_the_template_types_and_json_on_request() -> None:
    types = {"count": "integer", "ratio": "number", "dry": "boolean"}
    params = parse_params(
        ["count=3", "ratio=0.5", "dry=true", "name=; rm -rf /", "raw:=[1, 2]", "eq=a=b"], types
    )
    assert params == {"count": 3, "ratio": 0.5, "dry": True, "name": "; rm -rf /", "raw": [1, 2], "eq": "a=b"}


@pytest.mark.parametrize(
    ("pair", "message"),
    [("count=three", "count is a integer"), ("novalue", "expected key=value"), ("x:={", "must be JSON")],
)
def test_bad_params_are_refused(pair: str, message: str) -> None:
    with pytest.raises(CliError, match=message):
        parse_params([pair], {"count": "integer"})


def test_settings_prefer_options_then_environment_then_the_local_stack(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "stack.json").write_text(
        json.dumps({"journal": "127.0.0.1:1", "submit": "http://127.0.0.1:2", "router": "http://127.0.0.1:3",
                    "token_file": str(tmp_path / "token"), "journal_secret_file": "/s"})
    )  # fmt: skip
    args = argparse.Namespace(data_dir=str(tmp_path), journal=None, submit_url=None)
    from_stack = Settings.resolve(args, {})
    assert (from_stack.journal, from_stack.submit_url, from_stack.token, from_stack.sink) == (
        "127.0.0.1:1", "http://127.0.0.1:2", "from-file", "http://127.0.0.1:3",
    )  # fmt: skip
    env = {"XPIPE_JOURNAL": "10.0.0.1:7430", "XPIPE_TOKEN": "from-env"}
    assert Settings.resolve(args, env).journal == "10.0.0.1:7430"
    assert Settings.resolve(args, env).token == "from-env"
    args.journal = "h:9"
    assert Settings.resolve(args, env).journal == "h:9"


def test_without_a_journal_the_error_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(tmp_path), "jobs"]) == 1
    assert "pass --journal HOST:PORT, set XPIPE_JOURNAL, or start `xpipe up`" in capsys.readouterr().err


def test_a_malformed_journal_address_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(tmp_path), "--journal", "nohost", "jobs"]) == 2
    assert "must be HOST:PORT" in capsys.readouterr().err


def test_journal_verify_delegates_to_xpipe_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["journal", "verify", str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("XPIPE_TEMPLATES_DIR", "/nonexistent/templates", "/nonexistent/templates"),
        ("XPIPE_MAX_REVISION_TIMEOUT_SECONDS", "abc", "XPIPE_MAX_REVISION_TIMEOUT_SECONDS='abc'"),
    ],
)
def test_a_bad_catalog_setting_is_one_precise_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["templates"]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_text_from_jobs_is_shown_literally_not_read_as_markup() -> None:
    console = Console(width=200, record=True)
    job = {"jobId": "j-1", "template": "t", "state": "RUNNING", "requestedBy": "x:[/oops]"}
    console.print(jobs_table([job]))
    assert "x:[/oops]" in console.export_text()


def test_a_trimmed_view_says_what_it_leaves_out() -> None:
    job = {
        "jobId": "j-7",
        "state": "FAILED",
        "historyOmitted": 120,
        "directivesOmitted": 36,
        "steps": [
            {"name": "build", "attempts": [], "attemptsOmitted": 2, "compensation": {"attemptsOmitted": 1}},
            {"name": "test", "attempts": [], "attemptsOmitted": 0, "compensation": None},
        ],
    }
    console = Console(width=400, record=True)
    console.print(job_view(job))
    text = console.export_text()
    assert "not shown: 120 older history entries, 3 earlier attempts, 36 settled directives" in text
    assert "xpipe journal dump --job j-7" in text

    whole = {**job, "historyOmitted": 0, "directivesOmitted": 0, "steps": [{"name": "build", "attempts": []}]}
    assert omissions_note(whole) is None
