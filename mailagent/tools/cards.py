"""Cards: calendar invitations (.ics, text/calendar) and contact cards (.vcf) as readable text.

In: the bytes of one file. Out: plain text, one entry per event, to-do or contact, with the
fields a person reads (what, when, where, who, and how it recurs); the caller fences it as data.
Raises ToolError for a file that does not parse or is over the limits.
It must never act on what it reads: an invitation's METHOD (REQUEST, CANCEL) is shown, never
answered; replying to an organiser is mail to someone else, which mailagent does not send from
here. The only importer of icalendar and vobject, and only when such a file is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, datetime
from typing import Any

from mailagent.tools import ToolError

MAX_CARD_BYTES = 1024 * 1024  # a year of a busy calendar is well under this
MAX_ENTRIES = 100
MAX_FIELD_CHARS = 2_000
METHODS = {"REQUEST": "an invitation", "CANCEL": "a cancellation", "REPLY": "an answer to an "
           "invitation", "PUBLISH": "published events", "COUNTER": "a counter-proposal"}


def _bounded(data: bytes, what: str) -> str:
    if len(data) > MAX_CARD_BYTES:
        raise ToolError(f"the {what} is {len(data)} bytes, over the {MAX_CARD_BYTES} bytes "
                        "that are read as one; attach it or read it as text in parts")
    return data.decode("utf-8", errors="replace")


def _parsed(reader: Callable[[str], Any], text: str, what: str) -> Any:
    try:
        return reader(text)
    except Exception as exc:  # a third-party parser on hostile input: any failure is the file's
        raise ToolError(f"not a readable {what} ({type(exc).__name__}: {str(exc)[:200]})") \
            from exc


def _short(value: Any) -> str:
    text = " ".join(str(value).split()) if value is not None else ""
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + " [...]"


def _when(value: Any) -> str:
    moment = getattr(value, "dt", value)
    if isinstance(moment, datetime):
        zone = f" ({moment.tzinfo})" if moment.tzinfo is not None else " (floating time)"
        return moment.strftime("%Y-%m-%d %H:%M") + zone
    if isinstance(moment, date):
        return moment.isoformat() + " (all day)"
    return _short(moment)


def _people(value: Any) -> str:
    people = value if isinstance(value, list) else [value]
    names = []
    for person in people:
        params = getattr(person, "params", {})
        name = params.get("CN")
        address = str(person).removeprefix("mailto:").removeprefix("MAILTO:")
        answer = params.get("PARTSTAT")
        names.append(f"{name} <{address}>" if name else address)
        if answer:
            names[-1] += f" ({str(answer).lower()})"
    return _short(", ".join(names))


def _event_lines(component: Any) -> Iterator[str]:
    kind = {"VEVENT": "Event", "VTODO": "To-do", "VJOURNAL": "Note"}.get(component.name, "Item")
    yield f"{kind}: {_short(component.get('SUMMARY', '(no title)'))}"
    fields = (("DTSTART", "starts", _when), ("DTEND", "ends", _when), ("DUE", "due", _when),
              ("DURATION", "lasts", lambda v: _short(getattr(v, "dt", v))),
              ("LOCATION", "where", _short), ("ORGANIZER", "organiser", _people),
              ("ATTENDEE", "attendees", _people), ("STATUS", "status", _short),
              ("RRULE", "repeats", lambda v: _short(v.to_ical().decode())),
              ("URL", "link", _short), ("DESCRIPTION", "description", _short),
              ("UID", "uid", _short))
    for key, label, show in fields:
        if component.get(key) is not None:
            yield f"  {label}: {show(component.get(key))}"


def calendar_text(data: bytes) -> str:
    """An iCalendar file as text: its method (an invitation, a cancellation, ...), then each
    event, to-do and journal entry, at most MAX_ENTRIES."""
    import icalendar

    calendar = _parsed(icalendar.Calendar.from_ical, _bounded(data, "calendar"), "calendar")
    method = str(calendar.get("METHOD", "")).upper()
    lines = [f"Calendar ({method}: {METHODS.get(method, 'events')})" if method else "Calendar"]
    entries = [c for c in calendar.walk() if c.name in ("VEVENT", "VTODO", "VJOURNAL")]
    for component in entries[:MAX_ENTRIES]:
        lines.extend(_event_lines(component))
    if len(entries) > MAX_ENTRIES:
        lines.append(f"[... {len(entries) - MAX_ENTRIES} more entries not read]")
    if not entries:
        lines.append("(no events)")
    return "\n".join(lines)


CARD_FIELDS = (("fn", "name"), ("org", "organisation"), ("title", "title"), ("tel", "phone"),
               ("email", "email"), ("adr", "address"), ("url", "web"), ("bday", "birthday"),
               ("note", "note"))


def _card_value(line: Any) -> str:
    value = line.value
    if isinstance(value, list):  # ORG is a list of units
        value = ", ".join(str(v) for v in value if v)
    kinds = [str(t).lower() for t in line.params.get("TYPE", []) if str(t).lower() != "pref"]
    return _short(value) + (f" ({', '.join(kinds)})" if kinds else "")


def contacts_text(data: bytes) -> str:
    """A vCard file as text: each contact's name, organisation, phones, emails, addresses,
    web pages, birthday and note (photos and keys are left out), at most MAX_ENTRIES."""
    import vobject

    text = _bounded(data, "contact card")
    cards = _parsed(lambda t: list(vobject.readComponents(t)), text, "contact card")
    lines: list[str] = []
    for card in cards[:MAX_ENTRIES]:
        lines.append("Contact:")
        for key, label in CARD_FIELDS:
            for line in card.contents.get(key, [])[:20]:
                lines.append(f"  {label}: {_card_value(line)}")
        if "photo" in card.contents:
            lines.append("  (photo left out)")
    if len(cards) > MAX_ENTRIES:
        lines.append(f"[... {len(cards) - MAX_ENTRIES} more contacts not read]")
    return "\n".join(lines) or "(no contacts)"
