"""``iso_utc`` writes a deadline exactly as ``datetime`` would, without ``datetime`` on every call.

The step runtime parses this text (``step.run``'s ``deadline``), so the shortcut (arithmetic for the
fraction, a few seconds' texts kept) must agree with the plain conversion to the character, rounding
and carries included.
"""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from vms_adapter.server.jobs.directives import iso_utc


def plain(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Fractions on either side of where rounding to microseconds carries into the next millisecond or second.
EDGES = [
    0.0,
    0.0005,
    0.0004995,
    0.0009995,
    0.4999995,
    0.5,
    0.9994999,
    0.9995,
    0.9999994,
    0.9999995,
    0.99999999,
]


@settings(max_examples=400, deadline=None)
@given(
    whole=st.integers(-86_400 * 3, 4_102_444_800),
    fraction=st.one_of(st.sampled_from(EDGES), st.floats(0, 1, exclude_max=True)),
)
def test_the_deadline_text_is_what_datetime_writes(whole: int, fraction: float) -> None:
    moment = whole + fraction
    assert iso_utc(moment) == plain(moment)


def test_a_fraction_that_rounds_up_carries_into_the_next_second_and_day() -> None:
    assert iso_utc(1_764_028_799.9999996) == "2025-11-25T00:00:00.000Z"
    assert iso_utc(1_764_028_799.9994) == "2025-11-24T23:59:59.999Z"
    assert iso_utc(-1.5) == "1969-12-31T23:59:58.500Z"
    for second in range(1_764_000_000, 1_764_000_200):  # more seconds than are kept: texts are renewed
        assert iso_utc(second + 0.25) == plain(second + 0.25)
