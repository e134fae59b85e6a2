"""When: plain English schedules -> rules -> next run times, and schedules.toml entries.

In: `when` texts, an IANA time zone, aware datetimes, the text of schedules.toml. Out: `Rule`s,
next run times in UTC, `FileEntry`s, or WhenError with a message the model or the owner can act
on (the accepted forms, or the file and line). Pure: no clock, no store, no side effects.
Next runs are DST-correct: a daily 08:00 stays 08:00 local across a change; a local time that
does not exist that day (spring forward) runs at the first valid minute after the gap; a local
time that exists twice (fall back) runs once, at the first.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from pathlib import Path
from zoneinfo import ZoneInfo

from mailagent.errors import WhenError

# A loop with nothing due still looks this often: the command line may change the queue or the
# outbox from another process. Anything the service itself does wakes its loops at once.
IDLE_LOOK_SECONDS = 30.0


def quiet_seconds(due: datetime | None, now: datetime) -> float:
    """How long a loop may sleep at `now` when the next thing it must do on its own is at
    `due` (None: nothing is due)."""
    if due is None:
        return IDLE_LOOK_SECONDS
    left = (due - now).total_seconds()
    return min(IDLE_LOOK_SECONDS, max(0.0, left) + 0.01)


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
EVERY_DAY = tuple(range(7))
WORKDAYS = tuple(range(5))
ACCEPTED_FORMS = ("every 10 minutes", "every hour", "every 2 hours", "every day at 08:00",
                  "every weekday at 07:45", "every monday at 09:30", "at 2026-12-24 18:00")


@dataclass(frozen=True)
class Rule:
    kind: str  # interval | daily | once
    minutes: int = 0  # interval
    at: str = ""  # HH:MM local, daily
    days: tuple[int, ...] = ()  # weekdays of a daily rule, 0 = Monday
    once: str = ""  # YYYY-MM-DD HH:MM local

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Rule:
        data = json.loads(text)
        return cls(**{**data, "days": tuple(data.get("days", ()))})


_INTERVAL = re.compile(r"every (?:(\d{1,6}) )?(minute|minutes|min|mins|hour|hours)")
_DAILY = re.compile(r"every (day|weekday|" + "|".join(WEEKDAYS) + r")s? at (\d{1,2}):(\d{2})")
_ONCE = re.compile(r"(?:at|on) (\d{4})-(\d{2})-(\d{2})(?: at)? (\d{1,2}):(\d{2})")


def _refuse(text: str, why: str) -> WhenError:
    forms = "; ".join(f'"{f}"' for f in ACCEPTED_FORMS)
    return WhenError(f"cannot schedule {text!r}: {why}. Write `when` in one of these forms: "
                     f"{forms} (times are HH:MM, 24-hour, in the owner's time zone)")


def _clock(text: str, hour: str, minute: str) -> str:
    if int(hour) > 23 or int(minute) > 59:
        raise _refuse(text, f"{hour}:{minute} is not a time of day")
    return f"{int(hour):02d}:{minute}"


def parse_when(text: str, min_interval_minutes: int = 1) -> Rule:
    """The rule of a plain English schedule, or WhenError naming the accepted forms."""
    words = " ".join(text.strip().lower().rstrip(".").split())
    if match := _INTERVAL.fullmatch(words):
        count = int(match.group(1) or 1)
        minutes = count * (60 if match.group(2).startswith("hour") else 1)
        if minutes < min_interval_minutes:
            raise _refuse(text, f"runs must be at least {min_interval_minutes} minute(s) apart")
        return Rule("interval", minutes=minutes)
    if match := _DAILY.fullmatch(words):
        day = match.group(1)
        days = {"day": EVERY_DAY, "weekday": WORKDAYS}.get(day) or (WEEKDAYS.index(day),)
        return Rule("daily", at=_clock(text, match.group(2), match.group(3)), days=days)
    if match := _ONCE.fullmatch(words):
        year, month, day_of_month, hour, minute = match.groups()
        try:
            date(int(year), int(month), int(day_of_month))
        except ValueError:
            raise _refuse(text, f"{year}-{month}-{day_of_month} is not a date") from None
        return Rule("once", once=f"{year}-{month}-{day_of_month} {_clock(text, hour, minute)}")
    raise _refuse(text, "this form is not understood")


def describe(rule: Rule) -> str:
    """The canonical text of a rule, as shown to the owner."""
    if rule.kind == "interval":
        if rule.minutes % 60 == 0:
            hours = rule.minutes // 60
            return "every hour" if hours == 1 else f"every {hours} hours"
        return "every minute" if rule.minutes == 1 else f"every {rule.minutes} minutes"
    if rule.kind == "daily":
        names = {EVERY_DAY: "day", WORKDAYS: "weekday"}
        return f"every {names.get(rule.days) or WEEKDAYS[rule.days[0]]} at {rule.at}"
    return f"at {rule.once}"


def wall_to_utc(naive: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time: the first of two if it is ambiguous, the first
    valid minute after the gap if it does not exist (spring forward)."""
    first = naive.replace(tzinfo=zone).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    probe = naive.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(second=0, microsecond=0)
    while probe.astimezone(zone).replace(tzinfo=None) < naive:
        probe += timedelta(minutes=1)
    return probe


def next_run(rule: Rule, zone: ZoneInfo, after: datetime,
             previous: datetime | None = None) -> datetime | None:
    """The first run strictly after `after` (aware), in UTC; None when there is none left.
    Interval rules keep their rhythm from `previous` (the slot just run or missed)."""
    if rule.kind == "interval":
        step = timedelta(minutes=rule.minutes)
        if previous is None:
            return after + step
        missed = max(0, math.floor((after - previous) / step))
        return previous + (missed + 1) * step
    if rule.kind == "once":
        when = wall_to_utc(datetime.strptime(rule.once, "%Y-%m-%d %H:%M"), zone)
        return when if when > after else None
    hour, minute = (int(part) for part in rule.at.split(":"))
    start = after.astimezone(zone).date()
    for offset in range(8):
        day = start + timedelta(days=offset)
        if day.weekday() in rule.days:
            candidate = wall_to_utc(datetime.combine(day, wall_time(hour, minute)), zone)
            if candidate > after:
                return candidate
    raise AssertionError(f"no run within a week for {rule}")


def local_text(instant: datetime | None, zone: ZoneInfo) -> str:
    if instant is None:
        return "none"
    return instant.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")


@dataclass(frozen=True)
class FileEntry:
    key: str
    conversation: str
    when_text: str
    rule: Rule
    task: str


_CONVERSATION = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def read_schedules_file(file: Path, min_interval_minutes: int) -> list[FileEntry]:
    """The `[[schedule]]` entries of schedules.toml; WhenError naming the file and the line."""
    try:
        text = file.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WhenError(f"{file}: {exc}") from exc
    entries = data.get("schedule", [])
    if not isinstance(entries, list):
        raise WhenError(f"{file}: write each schedule as a [[schedule]] table")
    headers = [number for number, line in enumerate(text.splitlines(), 1)
               if line.strip().startswith("[[schedule]]")]
    return [_file_entry(f"{file}, line {headers[index] if index < len(headers) else '?'}",
                        entry, min_interval_minutes) for index, entry in enumerate(entries)]


def _file_entry(where: str, entry: object, min_interval: int) -> FileEntry:
    if not isinstance(entry, dict):
        raise WhenError(f"{where}: must be a table")
    when, task = entry.get("when"), entry.get("task")
    conversation = str(entry.get("conversation", "main")).lower()
    if not isinstance(when, str) or not isinstance(task, str) or not task.strip():
        raise WhenError(f"{where}: needs `when` and `task` as strings")
    if not _CONVERSATION.fullmatch(conversation):
        raise WhenError(f"{where}: conversation {conversation!r} is not a valid name")
    try:
        rule = parse_when(when, min_interval)
    except WhenError as exc:
        raise WhenError(f"{where}: {exc}") from None
    key = hashlib.sha256(json.dumps([conversation, rule.to_json(), task.strip()]).encode())
    return FileEntry(key.hexdigest()[:32], conversation, describe(rule), rule, task.strip())
