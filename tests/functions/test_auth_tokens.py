"""X-Token-XPipe as a specification: digests only, scopes, and no token in any message."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpipe.auth import TokenRegistry, main, token_digest
from xpipe.errors import ConfigurationError, Forbidden, Unauthenticated

SUBMIT_TOKEN = "s3cret-submit-token-0123456789"
RELAY_TOKEN = "s3cret-relay-token-0123456789"
ADMIN_TOKEN = "s3cret-admin-token-0123456789"


def registry(tmp_path: Path) -> TokenRegistry:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        f"- {{name: magento, scope: submit, sha256: {token_digest(SUBMIT_TOKEN)}}}\n"
        f"- {{name: broker, scope: relay, sha256: {token_digest(RELAY_TOKEN)}}}\n"
        f"- {{name: ops, scope: admin, sha256: {token_digest(ADMIN_TOKEN)}}}\n"
    )
    return TokenRegistry.load(path)


def test_a_known_token_with_the_right_scope_names_its_caller(tmp_path: Path) -> None:
    caller = registry(tmp_path).authorize(SUBMIT_TOKEN, "submit")
    assert (caller.name, caller.scope) == ("magento", "submit")


def test_admin_may_call_every_function(tmp_path: Path) -> None:
    tokens = registry(tmp_path)
    assert tokens.authorize(ADMIN_TOKEN, "submit").name == "ops"
    assert tokens.authorize(ADMIN_TOKEN, "relay").name == "ops"


@pytest.mark.parametrize(
    "token",
    [None, "", "wrong", SUBMIT_TOKEN[:-1], SUBMIT_TOKEN + "x", SUBMIT_TOKEN.upper(), "x" * 65536],
)
def test_missing_wrong_prefix_or_huge_tokens_are_unauthenticated(tmp_path: Path, token: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        registry(tmp_path).authorize(token, "submit")
    if token:
        assert token not in str(caught.value)


def test_a_valid_token_with_the_wrong_scope_is_forbidden_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(Forbidden) as caught:
        registry(tmp_path).authorize(RELAY_TOKEN, "submit")
    assert "broker" in str(caught.value)
    assert RELAY_TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", "non-empty YAML list"),
        ("[]", "non-empty YAML list"),
        ("- {name: a, scope: root, sha256: " + "a" * 64 + "}", "scope must be one of"),
        ("- {name: a, scope: submit, sha256: abc}", "64 lower-case hex"),
        ("- {name: a, scope: submit, token: hunter2, sha256: " + "a" * 64 + "}", "exactly the keys"),
        ("- {name: a, scope: submit, sha256: " + "a" * 64 + "}\n- {name: b, scope: relay, sha256: " + "a" * 64
         + "}", "appears twice"),
        ("- [unclosed hunter2", "not valid YAML"),
    ],
)  # fmt: skip
def test_a_bad_tokens_file_is_refused_at_start_up_without_quoting_it(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        TokenRegistry.load(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_the_token_generator_prints_an_entry_whose_digest_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["magento", "submit"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token = lines[0].rsplit(" ", 1)[1]
    path = tmp_path / "tokens.yaml"
    path.write_text("\n".join(lines[2:]) + "\n")
    assert TokenRegistry.load(path).authorize(token, "submit").name == "magento"
    assert main(["x", "root"]) == 2


def test_trusting_missing_tokens_admits_only_an_absent_header_and_only_for_relay(tmp_path: Path) -> None:
    tokens = registry(tmp_path)
    caller = tokens.authorize(None, "relay", trust_missing=True)
    assert (caller.name, caller.scope) == ("cluster-delivery", "relay")
    with pytest.raises(Unauthenticated):
        tokens.authorize("", "relay", trust_missing=True)  # a header that is present is checked
    with pytest.raises(Unauthenticated):
        tokens.authorize("wrong", "relay", trust_missing=True)
    with pytest.raises(Forbidden):
        tokens.authorize(None, "submit", trust_missing=True)
    with pytest.raises(Unauthenticated):
        tokens.authorize(None, "relay")
