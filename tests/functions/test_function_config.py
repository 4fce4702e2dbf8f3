"""The functions' configuration: every variable checked at start-up, errors naming the variable, secrets
never echoed; and the diagnostic report cut to fit one journal record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xpipe.config import BUILTIN_TEMPLATES_DIR, load
from xpipe.errors import ConfigurationError
from xpipe.journal import MAX_RECORD_BYTES, idempotency_key
from xpipe.rollback import fit_report

BASE = {
    "XPIPE_JOURNAL": "127.0.0.1:7430",
    "XPIPE_TOKENS_FILE": "/etc/tokens.yaml",
    "K_SINK": "http://broker/",
}


def test_defaults_are_documented_values() -> None:
    config = load(BASE)
    assert (config.journal_host, config.journal_port) == ("127.0.0.1", 7430)
    assert config.backend == "local"
    assert config.max_body_bytes == 1024 * 1024
    assert config.max_revision_timeout_seconds == 600
    assert config.templates_dir == BUILTIN_TEMPLATES_DIR
    assert config.journal_secret is None
    assert config.journal_tls is False
    assert config.trust_cluster_deliveries is False


@pytest.mark.parametrize(
    ("change", "tls"),
    [({"XPIPE_JOURNAL_TLS": " TRUE "}, True), ({"XPIPE_JOURNAL_TLS": "0"}, False),
     ({"XPIPE_JOURNAL_CA_FILE": "/etc/xpipe/ca.pem"}, True)],
    ids=["true", "false", "ca-file-implies-tls"],
)  # fmt: skip
def test_journal_tls_is_a_flag_and_a_ca_file_turns_it_on(change: dict[str, str], tls: bool) -> None:
    assert load({**BASE, **change}).journal_tls is tls


def test_ipv6_journal_address_and_overrides_are_parsed() -> None:
    config = load(
        {**BASE, "XPIPE_JOURNAL": "[::1]:7000", "K_CE_OVERRIDES": '{"extensions": {"cluster": "a"}}'}
    )
    assert (config.journal_host, config.journal_port) == ("::1", 7000)
    assert dict(config.ce_overrides) == {"cluster": "a"}


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"XPIPE_JOURNAL": ""}, "XPIPE_JOURNAL"),
        ({"XPIPE_JOURNAL": "journal"}, "XPIPE_JOURNAL"),
        ({"XPIPE_JOURNAL": "journal:99999"}, "XPIPE_JOURNAL"),
        ({"XPIPE_TOKENS_FILE": ""}, "XPIPE_TOKENS_FILE"),
        ({"K_SINK": ""}, "K_SINK"),
        ({"K_SINK": "ftp://broker/"}, "K_SINK"),
        ({"K_SINK": "http:///no-host"}, "K_SINK"),
        ({"K_SINK": "http://broker:port/"}, "K_SINK"),
        ({"K_SINK": "http://[::1/"}, "K_SINK"),
        ({"K_SINK": "http://broker/a path"}, "K_SINK"),
        ({"K_SINK": "http://broker/\r\nX-Injected: 1"}, "K_SINK"),
        ({"XPIPE_BACKEND": "docker"}, "XPIPE_BACKEND"),
        ({"XPIPE_MAX_BODY_BYTES": "lots"}, "XPIPE_MAX_BODY_BYTES"),
        ({"XPIPE_MAX_BODY_BYTES": "10"}, "XPIPE_MAX_BODY_BYTES"),
        ({"XPIPE_JOURNAL_TIMEOUT_SECONDS": "inf"}, "XPIPE_JOURNAL_TIMEOUT_SECONDS"),
        ({"XPIPE_JOURNAL_TLS": "maybe"}, "XPIPE_JOURNAL_TLS"),
        ({"XPIPE_LOG_LEVEL": "loud"}, "XPIPE_LOG_LEVEL"),
        ({"XPIPE_TRUST_CLUSTER_DELIVERIES": "yes"}, "XPIPE_TRUST_CLUSTER_DELIVERIES"),
        ({"K_CE_OVERRIDES": "{not json"}, "K_CE_OVERRIDES"),
        ({"K_CE_OVERRIDES": '{"extensions": {"a": 1}}'}, "K_CE_OVERRIDES"),
        ({"K_CE_OVERRIDES": '{"extensions": {"id": "fixed"}}'}, "K_CE_OVERRIDES"),
        ({"K_CE_OVERRIDES": '{"extensions": {"xpipejob": "j-1"}}'}, "K_CE_OVERRIDES"),
        ({"XPIPE_JOURNAL_SECRET_FILE": "/nonexistent/secret"}, "XPIPE_JOURNAL_SECRET_FILE"),
    ],
)
def test_a_bad_variable_is_refused_by_name(change: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        load({**BASE, **change})


@pytest.mark.parametrize("sink", ["ftp://user:s3cret@broker/", "http://user:s3cret@broker/a b"])
def test_a_refused_sink_url_never_shows_its_credentials(sink: str) -> None:
    with pytest.raises(ConfigurationError, match="K_SINK") as refused:
        load({**BASE, "K_SINK": sink})
    assert "s3cret" not in str(refused.value)
    assert "***@broker" in str(refused.value)


def test_the_journal_secret_is_read_from_its_file_and_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2-journal\n")
    config = load({**BASE, "XPIPE_JOURNAL_SECRET_FILE": str(secret)})
    assert config.journal_secret == b"hunter2-journal"
    assert "hunter2" not in repr(config)
    secret.write_text("\n")
    with pytest.raises(ConfigurationError) as caught:
        load({**BASE, "XPIPE_JOURNAL_SECRET_FILE": str(secret)})
    assert "hunter2" not in str(caught.value)


def test_idempotency_keys_are_source_and_id_or_a_digest_when_unusable() -> None:
    assert idempotency_key("/magento/shop-1", "order-7") == "/magento/shop-1 order-7"
    long_key = idempotency_key("/s" * 200, "id")
    assert long_key.startswith("sha256:")
    assert len(long_key) <= 256
    assert idempotency_key("/s\n", "id") != idempotency_key("/s", "\nid")


def test_a_huge_diagnostic_report_is_cut_to_fit_one_record_keeping_log_ends() -> None:
    tail = "x" * 200_000 + "THE-LAST-LINE"
    report = {"jobId": "j-1", "services": {f"svc-{i}": {"logTail": tail} for i in range(5)}, "errors": []}
    fitted = fit_report(report)
    assert len(json.dumps(fitted).encode()) <= MAX_RECORD_BYTES
    assert fitted["services"]["svc-0"]["logTail"].endswith("THE-LAST-LINE")
    small = {"jobId": "j-1", "services": {}, "errors": ["pods: forbidden"]}
    assert fit_report(small) == small
