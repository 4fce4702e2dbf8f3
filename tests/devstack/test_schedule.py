"""PingSource schedules: cron fields, macros, time zones, and refusals."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from xpipe.devstack.errors import ManifestError
from xpipe.devstack.schedule import Schedule

NOW = datetime(2026, 11, 25, 13, 7, 30, tzinfo=timezone.utc)  # a Wednesday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("* * * * *", datetime(2026, 11, 25, 13, 8, tzinfo=timezone.utc)),
        ("*/5 * * * *", datetime(2026, 11, 25, 13, 10, tzinfo=timezone.utc)),
        ("0 0 * * *", datetime(2026, 11, 26, 0, 0, tzinfo=timezone.utc)),
        ("@hourly", datetime(2026, 11, 25, 14, 0, tzinfo=timezone.utc)),
        ("30 9 * * mon-fri", datetime(2026, 11, 26, 9, 30, tzinfo=timezone.utc)),
        ("0 12 1 jan *", datetime(2027, 1, 1, 12, 0, tzinfo=timezone.utc)),
        ("0 0 * * 7", datetime(2026, 11, 29, 0, 0, tzinfo=timezone.utc)),
        ("CRON_TZ=Europe/Vienna 0 15 * * *", datetime(2026, 11, 25, 14, 0, tzinfo=timezone.utc)),
    ],
)
def test_next_tick(expression: str, expected: datetime) -> None:
    assert Schedule.parse(expression, "s").next_after(NOW) == expected


def test_every_is_an_interval() -> None:
    assert Schedule.parse("@every 1m30s", "s").interval_s == 90.0


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "five fields"),
        ("61 * * * *", "out of range"),
        ("0 0 31 2 *", "never fires"),
        ("x * * * *", "cannot read"),
        ("CRON_TZ=Mars/Olympus * * * * *", "unknown time zone"),
        ("@every soon", "@every needs a duration"),
    ],
)
def test_bad_schedules_are_refused(expression: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Schedule.parse(expression, "s")
