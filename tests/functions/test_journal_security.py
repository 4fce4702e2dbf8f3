"""The functions talk to the journal as in production: TLS verified against a CA file and the shared HELLO
secret read from a file. A wrong secret makes the function not ready and its commits 503 (retried), and
the secret never shows in a response or a log line."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from functions_harness import (
    RELAY_TOKEN,
    EventSink,
    FunctionServer,
    JournalProcess,
    cloud_event,
    function_env,
)

from vms_adapter.client import JournalClient
from xpipe.events import STEP_HEARTBEAT
from xpipe.templates import BUILTIN_TEMPLATES_DIR, Catalog, resolve

SECRET = "journal-secret-for-tests-" + uuid.uuid4().hex

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")


@pytest.fixture(scope="module")
def certificate(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "journal.crt", workdir / "journal.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def secure_journal(workdir: Path, certificate: tuple[Path, Path]) -> Iterator[JournalProcess]:
    secret_file = workdir / "journal.secret"
    secret_file.write_text(SECRET + "\n")
    cert, key = certificate
    process = JournalProcess(
        workdir / "secure-journal", workdir / "secure-journal.log",
        ("--secret-file", str(secret_file), "--tls-cert", str(cert), "--tls-key", str(key)),
    )  # fmt: skip
    yield process.start()
    process.stop()


def relay_env(
    journal: JournalProcess, sink: EventSink, tokens: Path, cert: Path, secret: Path
) -> dict[str, str]:
    return function_env(
        journal, sink, tokens, XPIPE_JOURNAL_CA_FILE=str(cert), XPIPE_JOURNAL_SECRET_FILE=str(secret)
    )


def test_tls_and_the_shared_secret_carry_commits(
    secure_journal: JournalProcess,
    sink: EventSink,
    tokens: Path,
    workdir: Path,
    certificate: tuple[Path, Path],
) -> None:
    cert, _ = certificate
    env = relay_env(secure_journal, sink, tokens, cert, workdir / "journal.secret")
    relay = FunctionServer("health-relay", env, workdir / "secure-relay.log").wait_until("/health/readiness")
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with JournalClient("127.0.0.1", secure_journal.port, secret=SECRET, tls=context) as client:
            catalog = Catalog.load(BUILTIN_TEMPLATES_DIR, max_revision_timeout_seconds=600)
            plan = resolve(catalog.get("demo-ok"), {}, requested_by="tests", default_image="img").plan
            job_id = client.commit(
                None, [{"type": "JOB_REGISTERED", "data": plan}], idempotency_key=str(uuid.uuid4())
            ).job_id
            beat = {"jobId": job_id, "step": "prepare", "attempt": 1, "pod": "pod-tls"}
            assert relay.post(cloud_event(STEP_HEARTBEAT, beat), token=RELAY_TOKEN).status_code == 202
            assert client.read_job(job_id)["state"] == "RUNNING"
    finally:
        relay.stop()


def test_a_wrong_journal_secret_means_not_ready_and_503_without_leaking_it(
    secure_journal: JournalProcess,
    sink: EventSink,
    tokens: Path,
    workdir: Path,
    certificate: tuple[Path, Path],
) -> None:
    cert, _ = certificate
    wrong = workdir / "wrong.secret"
    wrong.write_text("not-the-secret-" + uuid.uuid4().hex)
    env = relay_env(secure_journal, sink, tokens, cert, wrong)
    relay = FunctionServer("health-relay", env, workdir / "wrong-secret-relay.log").wait_until(
        "/health/liveness"
    )
    try:
        assert relay.http.get("/health/readiness").status_code == 503
        beat = {"jobId": "j-1", "step": "prepare", "attempt": 1, "pod": "pod-x"}
        response = relay.post(cloud_event(STEP_HEARTBEAT, beat), token=RELAY_TOKEN)
        assert response.status_code == 503
        for text in (response.text, relay.log()):
            assert SECRET not in text
            assert wrong.read_text() not in text
    finally:
        relay.stop()
