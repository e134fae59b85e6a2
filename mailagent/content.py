"""Mail content as text: what the owner typed, and everything else as data.

In: decoded body text (plain or HTML). Out: the owner's typed text, apart from quoted history,
forwarded messages and the signature. Pure functions, no I/O. The split is deliberately
conservative: whatever follows the first quote, attribution or forward marker is data, never
instruction, even if the owner typed below it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser

# Zero-width, bidirectional controls and other invisible format characters (category Cf),
# plus C0/C1 controls other than tab and newline.
_INVISIBLE = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)

_ATTRIBUTION = re.compile(
    r"^\s*(on\b.{0,200}\bwrote:|le\b.{0,200}\ba écrit\s?:|am\b.{0,200}\bschrieb.{0,60}:"
    r"|el\b.{0,200}\bescribió:|op\b.{0,200}\bschreef.{0,60}:|il\b.{0,200}\bha scritto:)\s*$",
    re.IGNORECASE,
)
_ATTRIBUTION_START = re.compile(r"^\s*(on|le|am|el|op|il)\s", re.IGNORECASE)
_ORIGINAL = re.compile(
    r"^\s*(-{2,}\s*original message\s*-{2,}|_{10,}|-{2,}\s*ursprüngliche nachricht\s*-{2,})\s*$",
    re.IGNORECASE,
)
_FORWARD = re.compile(
    r"^\s*(-{2,}\s*forwarded message\s*-{2,}|begin forwarded message:"
    r"|-{2,}\s*weitergeleitete nachricht\s*-{2,}|-{2,}\s*message transféré\s*-{2,})\s*$",
    re.IGNORECASE,
)
_OUTLOOK_HEADER = re.compile(r"^\s*\*?(from|de|von|van):\*?\s.+$", re.IGNORECASE)
_SIGNATURE = "-- "


@dataclass(frozen=True)
class SplitText:
    typed: str
    quoted: str
    forwarded: str


def strip_invisible(text: str) -> str:
    """Remove control, zero-width and bidirectional formatting characters; keep tab and newline."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _INVISIBLE.sub("", text)


def clean_header(value: str, max_chars: int = 998) -> str:
    """A header value on one line, without control or invisible characters."""
    return " ".join(strip_invisible(value).split())[:max_chars]


def _cut_kind(lines: list[str], i: int) -> str | None:
    line = lines[i]
    if _FORWARD.match(line):
        return "forwarded"
    if line.startswith(">") or _ORIGINAL.match(line) or _ATTRIBUTION.match(line):
        return "quoted"
    if _ATTRIBUTION_START.match(line):
        joined = " ".join(lines[i : i + 3])
        if _ATTRIBUTION.match(joined) or re.search(r"\bwrote:\s*$", joined, re.IGNORECASE):
            return "quoted"
    previous_blank = i == 0 or not lines[i - 1].strip()
    if previous_blank and _OUTLOOK_HEADER.match(line) and i + 1 < len(lines):
        following = " ".join(lines[i + 1 : i + 4]).lower()
        if any(k in following for k in ("sent:", "date:", "to:", "subject:", "gesendet:")):
            return "quoted"
    return None


def split_reply(text: str) -> SplitText:
    """Split a plain-text body into typed text, quoted history and a forwarded message."""
    lines = strip_invisible(text).split("\n")
    for i in range(len(lines)):
        if lines[i] == _SIGNATURE or lines[i] == "--":
            typed, rest, kind = lines[:i], lines[i:], "signature"
            break
        kind_found = _cut_kind(lines, i)
        if kind_found:
            typed, rest, kind = lines[:i], lines[i:], kind_found
            break
    else:
        typed, rest, kind = lines, [], "none"
    rest_text = "\n".join(rest).strip()
    return SplitText(
        typed="\n".join(typed).strip(),
        quoted=rest_text if kind == "quoted" else "",
        forwarded=rest_text if kind == "forwarded" else "",
    )


class _TextExtractor(HTMLParser):
    """HTML to text: block elements become line breaks, blockquotes become `>` lines."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                         "table", "ul", "ol", "pre", "hr"})
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.quote_depth = 0
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip_depth += 1
        elif tag == "blockquote":
            self.quote_depth += 1
            self.lines.append("")
        elif tag in self._BLOCKS:
            self.lines.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)
            self.lines.append("")
        elif tag in self._BLOCKS:
            self.lines.append("")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.quote_depth and not self.lines[-1]:
            self.lines[-1] = "> " * self.quote_depth
        self.lines[-1] += " ".join(data.split()) if data.strip() else (" " if data else "")


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML body; quoted blocks are prefixed with `>`."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = [line.strip() for line in extractor.lines]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------- data fences

# A fence tag and what could pass for one: `<` or `/` look-alikes that NFKC does not fold, and
# letters from other scripts that look like those of "data" (Cyrillic a, Greek tau, ...).
_ANGLES = "<\u2039\u2329\u27e8\u276e\u02c2\u3008\ufe64\uff1c\u1438\u227a\u2264\u29fc"
_SLASHES = "/\u2215\u2044\uff0f\u29f8\u2571\\\\"
_FENCE_LIKE = re.compile(f"[{_ANGLES}]\\s*[{_SLASHES}]?\\s*([^\\s=>\"'/{_ANGLES}]{{1,40}})")
_LOOK_ALIKES = str.maketrans({
    "\u0430": "a", "\u0410": "a", "\u03b1": "a", "\u0391": "a", "\u0251": "a", "\u1d00": "a",
    "\u0501": "d", "\u217e": "d", "\u13e7": "d", "\u1d05": "d", "\u0257": "d", "\u0256": "d",
    "\u0442": "t", "\u0422": "t", "\u03c4": "t", "\u03a4": "t", "\u1d1b": "t", "\u01ad": "t",
})


def _skeleton(word: str) -> str:
    """`word` as it looks: accents and other combining marks dropped, look-alikes mapped."""
    bare = "".join(ch for ch in unicodedata.normalize("NFKD", word)
                   if not unicodedata.combining(ch))
    return bare.translate(_LOOK_ALIKES).casefold()


def _defuse(match: re.Match[str]) -> str:
    if not _skeleton(match.group(1)).startswith("data"):
        return match.group(0)
    return "[" + match.group(0)[1:]


def neutralise(text: str) -> str:
    """Data made safe to fence: compatibility forms folded (fullwidth brackets become ASCII),
    invisible characters removed, and anything that looks like a fence tag defused, including
    look-alikes from other scripts and brackets NFKC leaves alone."""
    text = strip_invisible(unicodedata.normalize("NFKC", text))
    return _FENCE_LIKE.sub(_defuse, text)


def fence_open(kind: str, nonce: str, **labels: str | int) -> str:
    """The opening tag of a data block, its labels neutralised like its content."""
    attributes = "".join(
        f' {name}="{neutralise(str(value))[:200].replace(chr(34), chr(39))}"'
        for name, value in labels.items()
    )
    return f'<data kind="{kind}" id="{nonce}"{attributes}>'


def fence_close(nonce: str) -> str:
    return f'</data id="{nonce}">'


def fence(kind: str, text: str, nonce: str, **labels: str | int) -> str:
    """Wrap untrusted `text` in a data block the model is told never to obey.

    `nonce` is random per task and unknown to the sender, so content cannot close the fence.
    An image or a PDF is fenced the same way, by a text block with the opening tag before it
    and one with the closing tag after it.
    """
    return f"{fence_open(kind, nonce, **labels)}\n{neutralise(text)}\n{fence_close(nonce)}"
