"""What counts as one mail address: the strict parse that intake applies to a From header and
config applies to each owner address, so that an owner address is always one a From can match.

In: a header value or a config string. Out: the plain address (addr-spec), lowercased, or the
reason it is not one. Pure: no I/O, no logging.
"""

from __future__ import annotations

import re
from email.headerregistry import HeaderRegistry

_ADDR_SPEC = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


def plain_address(text: str) -> tuple[str | None, str]:
    """The single mailbox `text` names, as a lowercased addr-spec; or (None, why not)."""
    try:
        parsed = HeaderRegistry()("from", text)
    except Exception as exc:  # the stdlib parser raises many types on hostile input
        return None, f"does not parse ({type(exc).__name__})"
    addresses = [a for group in getattr(parsed, "groups", ()) for a in group.addresses]
    if len(addresses) != 1:
        return None, f"holds {len(addresses)} mailboxes, not one"
    if parsed.defects:
        return None, f"is not a well-formed address ({parsed.defects[0]})"
    address = addresses[0].addr_spec.lower()
    if not _ADDR_SPEC.match(address):
        return None, "is not a plain address of the form name@domain.tld"
    return address, ""
