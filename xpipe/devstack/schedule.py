"""PingSource schedules: the five-field cron syntax Knative accepts (with ``CRON_TZ=``), its ``@hourly``-style
macros and ``@every <duration>``, turned into "when is the next tick after now".

One minute is the finest cron resolution, as in Knative; the router's ``--ping-interval`` replaces every
schedule with a fixed, faster interval for development.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from xpipe.devstack.errors import ManifestError

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAMES = {
    3: {
        m: i + 1
        for i, m in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
        )
    },
    4: {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|m|s|ms))+")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_GO_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# A schedule that matches nothing within this horizon (31 February) is refused rather than looped over.
_HORIZON = timedelta(days=366 * 5)


def _field(text: str, index: int, where: str) -> frozenset[int]:
    low, high = _RANGES[index]
    names = _NAMES.get(index, {})
    values: set[int] = set()
    for part in text.lower().split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = low, high
            else:
                first, _, last = base.partition("-")
                start = names[first] if first in names else int(first)
                end = (
                    (names[last] if last in names else int(last)) if last else (high if step_text else start)
                )
        except (ValueError, KeyError):
            raise ManifestError(where, f"cannot read cron field {text!r}") from None
        if step < 1 or not low <= start <= end <= high:
            raise ManifestError(where, f"cron field {text!r} is out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    """When a PingSource fires: a cron expression in a time zone, or a fixed interval."""

    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()
    day_restricted: bool = False
    weekday_restricted: bool = False
    tz: timezone | ZoneInfo = timezone.utc
    interval_s: float | None = None

    @classmethod
    def every(cls, seconds: float) -> Schedule:
        return cls(interval_s=seconds)

    @classmethod
    def parse(cls, expression: str, where: str, tz_name: str | None = None) -> Schedule:
        text = expression.strip()
        if text.startswith("CRON_TZ=") or text.startswith("TZ="):
            tz_part, _, text = text.partition(" ")
            tz_name = tz_part.split("=", 1)[1]
            text = text.strip()
        tz: timezone | ZoneInfo = timezone.utc
        if tz_name:
            try:
                tz = ZoneInfo(tz_name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ManifestError(where, f"unknown time zone {tz_name!r}") from None
        if text.startswith("@every"):
            duration = text[len("@every") :].strip()
            if not _GO_DURATION.fullmatch(duration):
                raise ManifestError(where, f"@every needs a duration such as 1m or 30s, not {duration!r}")
            seconds = sum(float(n) * _GO_UNIT_S[u] for n, u in _GO_PART.findall(duration))
            if seconds <= 0:
                raise ManifestError(where, "@every needs a duration longer than zero")
            return cls(interval_s=seconds, tz=tz)
        text = _MACROS.get(text, text)
        fields = text.split()
        if len(fields) != 5:
            raise ManifestError(
                where, f"a cron schedule has five fields (minute hour day month weekday): {expression!r}"
            )
        parsed = [_field(f, i, where) for i, f in enumerate(fields)]
        schedule = cls(
            minutes=parsed[0],
            hours=parsed[1],
            days=parsed[2],
            months=parsed[3],
            weekdays=parsed[4],
            day_restricted=not fields[2].startswith("*"),
            weekday_restricted=not fields[4].startswith("*"),
            tz=tz,
        )
        schedule.next_after(datetime(2000, 1, 1, tzinfo=timezone.utc), where)
        return schedule

    def _day_matches(self, moment: datetime) -> bool:
        in_days = moment.day in self.days
        in_weekdays = (moment.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:  # classic cron: either one
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, now: datetime, where: str = "schedule") -> datetime:
        """The first tick strictly after ``now`` (an aware datetime)."""
        if self.interval_s is not None:
            return now + timedelta(seconds=self.interval_s)
        moment = now.astimezone(self.tz).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = moment + _HORIZON
        while moment < limit:
            if moment.month not in self.months:
                moment = (moment.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(moment):
                moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if moment.hour not in self.hours:
                moment = moment.replace(minute=0) + timedelta(hours=1)
                continue
            if moment.minute not in self.minutes:
                moment += timedelta(minutes=1)
                continue
            return moment.astimezone(timezone.utc)
        raise ManifestError(where, "the cron schedule never fires")
