"""Markdown -> the two parts of a mail: HTML styled on its elements, and clean plain text.

The only importer of markdown_it. In: the Markdown of a rendered template (the model's answer
inside it), and the pictures the mail carries (a key the template wrote -> a Content-ID).
Out: an HTML fragment, and text for the text/plain part. Pure.

The HTML loads nothing: raw HTML is off, a link becomes its text and its address as text, and
an image becomes its words, unless its source is a key of a picture carried in the mail itself,
which becomes `cid:` (SECURITY.md E1). Styles sit on the elements, since Gmail drops `<style>`,
and set no text or background colour, so a dark mode's own colours stay legible; greys are
translucent to read on either. Code, paths and tables wrap instead of running off a phone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from html import escape
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

GREY = "rgba(127,127,127,0.14)"
LINE = "rgba(127,127,127,0.55)"
WRAP = "overflow-wrap:anywhere;word-break:break-word;"
# In a table cell, breaking anywhere would let the table squeeze a column of short words to a
# letter a line; only a cell with a word too long for a phone gets it.
CELL_WRAP = "overflow-wrap:break-word;word-break:normal;"
LONG_WORD = 16
MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"

STYLES = {
    "p": "margin:0 0 12px;",
    "h1": "font-size:22px;line-height:1.25;margin:16px 0 8px;",
    "h2": "font-size:19px;line-height:1.25;margin:16px 0 8px;",
    "h3": "font-size:17px;line-height:1.3;margin:14px 0 6px;",
    "h4": "font-size:16px;margin:12px 0 6px;", "h5": "font-size:15px;margin:12px 0 6px;",
    "h6": "font-size:14px;margin:12px 0 6px;",
    "ul": "margin:0 0 12px;padding-left:24px;", "ol": "margin:0 0 12px;padding-left:28px;",
    "li": "margin:0 0 4px;",
    "blockquote": f"margin:0 0 12px;padding:0 0 0 12px;border-left:3px solid {LINE};",
    "hr": f"border:0;border-top:1px solid {LINE};margin:16px 0;height:0;",
    "table": "border-collapse:collapse;margin:0 0 12px;max-width:100%;font-size:14px;",
    "th": f"border:1px solid {LINE};padding:5px 6px;text-align:left;vertical-align:top;"
          f"font-weight:600;background-color:{GREY};",
    "td": f"border:1px solid {LINE};padding:5px 6px;text-align:left;vertical-align:top;",
    "code": f"{MONO}font-size:0.92em;padding:1px 4px;border-radius:3px;"
            f"background-color:{GREY};{WRAP}",
    "pre": f"{MONO}font-size:14px;line-height:1.4;margin:0 0 12px;padding:8px 10px;"
           f"border-radius:4px;border:1px solid {LINE};background-color:{GREY};"
           f"white-space:pre-wrap;{WRAP}",
    "img": "display:block;max-width:100%;height:auto;margin:0 0 12px;border:0;",
}
# Around the whole fragment: Gmail keeps a div's style where it drops the body's.
WRAPPER = ("font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;font-size:16px;"
           f"line-height:1.45;max-width:640px;{WRAP}")


@cache
def _parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    parser.add_render_rule("fence", _code_block)
    parser.add_render_rule("code_block", _code_block)
    parser.add_render_rule("image", _image)
    parser.add_render_rule("link_open", _link_open)
    parser.add_render_rule("link_close", _link_close)
    return parser


def to_html(text: str, pictures: Mapping[str, str] | None = None) -> str:
    """The HTML fragment of `text`; `pictures` maps an image source to the Content-ID of a
    part of the same mail. Escaped by the parser: safe to put in a page as it is."""
    parser = _parser()
    env: dict[str, Any] = {"pictures": dict(pictures or {}), "links": []}
    tokens = parser.parse(text, env)
    _style(tokens)
    body = parser.renderer.render(tokens, parser.options, env)
    return f'<div style="{WRAPPER}">\n{body}</div>'


def _style(tokens: Sequence[Token]) -> None:
    for index, token in enumerate(tokens):
        style = STYLES.get(token.tag)
        if token.type in ("th_open", "td_open"):
            words = tokens[index + 1].content.split()
            long = any(len(word) > LONG_WORD for word in words)
            style = (style or "") + (WRAP if long else CELL_WRAP)
        if style and token.nesting >= 0 and token.type not in ("fence", "code_block"):
            token.attrSet("style", style + str(token.attrGet("style") or ""))
        if token.children:
            _style(token.children)


def _code_block(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return f'<pre style="{STYLES["pre"]}"><code>{escape(tokens[idx].content)}</code></pre>\n'


def _image(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    words = self.renderInlineAsText(token.children or [], options, env)
    content_id = env["pictures"].get(str(token.attrGet("src") or ""))
    if content_id is None:  # never a remote load: the words and the address, as text
        return escape(f"{words} ({token.attrGet('src')})" if words else str(token.attrGet("src")))
    return (f'<img src="cid:{escape(content_id)}" alt="{escape(words)}" '
            f'style="{STYLES["img"]}">')


def _link_open(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    env["links"].append(str(tokens[idx].attrGet("href") or ""))
    return ""


def _link_close(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    href = env["links"].pop() if env["links"] else ""
    words = _words_before(tokens, idx)
    return "" if not href or href in (words, f"mailto:{words}") else f" ({escape(href)})"


def _words_before(tokens: Sequence[Token], idx: int) -> str:
    """The text of the link that ends at `idx`."""
    words, depth = [], 0
    for token in reversed(tokens[:idx]):
        if token.type == "link_open" and depth == 0:
            break
        depth += {"link_close": 1, "link_open": -1}.get(token.type, 0)
        words.append(token.content)
    return "".join(reversed(words))


# ---------------------------------------------------------------- plain text

RULE = "―" * 20


def to_text(text: str) -> str:
    """`text` as a plain text mail: no Markdown marks, links as "words (address)", lists with
    "- " and "1. ", tables as aligned columns, code indented; paragraphs one line each, for
    the reader's client to wrap."""
    writer = _TextWriter()
    writer.blocks(_parser().parse(text, {"pictures": {}, "links": []}))
    return "\n".join(writer.lines).strip("\n") + "\n"


class _TextWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.prefixes: list[str] = []  # per open list item or quote: what starts its lines
        self.markers: list[str] = []  # the marker a list item's first line still awaits
        self.counters: list[int | None] = []  # per open list: the next number, None for "-"
        self.tight: list[bool] = []

    def blocks(self, tokens: Sequence[Token]) -> None:
        index = 0
        while index < len(tokens):
            index = self.block(tokens, index)

    def block(self, tokens: Sequence[Token], index: int) -> int:
        token = tokens[index]
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            if not (self.tight and self.tight[-1]):  # a list inside a tight item follows on
                self.gap()
            start = token.attrGet("start")
            self.counters.append(None if kind == "bullet_list_open" else int(start or 1))
            self.tight.append(_is_tight(tokens, index))
        elif kind in ("bullet_list_close", "ordered_list_close"):
            self.counters.pop()
            self.tight.pop()
        elif kind == "list_item_open":
            number = self.counters[-1]
            marker = "- " if number is None else f"{number}. "
            if number is not None:
                self.counters[-1] = number + 1
            if not self.tight[-1]:
                self.gap()
            self.markers.append(marker)
            self.prefixes.append(" " * len(marker))
        elif kind == "list_item_close":
            self.prefixes.pop()
            if self.markers:
                self.markers.pop()
        elif kind == "blockquote_open":
            self.gap()
            self.prefixes.append("> ")
        elif kind == "blockquote_close":
            self.prefixes.pop()
        elif kind == "inline":
            if not token.hidden and not (self.tight and self.tight[-1] and self.markers):
                self.gap()
            # A quote keeps its lines: the words of a mail or a task, as they were written.
            soft = "\n" if "> " in self.prefixes else " "
            self.emit(inline_text(token.children or [], soft).split("\n"))
        elif kind in ("fence", "code_block"):
            self.gap()
            self.emit(["    " + line for line in token.content.rstrip("\n").split("\n")])
        elif kind == "hr":
            self.gap()
            self.emit([RULE])
        elif kind == "table_open":
            return self.table(tokens, index)
        return index + 1

    def gap(self) -> None:
        if self.lines and self.lines[-1].strip(" >") != "":
            self.lines.append(self.prefix().rstrip())

    def prefix(self) -> str:
        return "".join(self.prefixes)

    def emit(self, lines: list[str]) -> None:
        for line in lines:
            prefix = self.prefix()
            if self.markers and self.markers[-1]:  # the first line of a list item
                prefix = prefix[: -len(self.markers[-1])] + self.markers[-1]
                self.markers[-1] = ""
            self.lines.append((prefix + line).rstrip())

    def table(self, tokens: Sequence[Token], index: int) -> int:
        rows: list[list[str]] = []
        while tokens[index].type != "table_close":
            token = tokens[index]
            if token.type == "tr_open":
                rows.append([])
            elif token.type == "inline":
                rows[-1].append(inline_text(token.children or []).replace("\n", " "))
            index += 1
        self.gap()
        self.emit(aligned(rows))
        return index + 1


def _is_tight(tokens: Sequence[Token], index: int) -> bool:
    """A list whose items' paragraphs are hidden is tight: no blank line between items."""
    level = tokens[index].level
    for token in tokens[index + 1:]:
        if token.level == level:
            return True
        if token.type == "paragraph_open" and token.level == level + 2:
            return token.hidden
    return True


def aligned(rows: list[list[str]]) -> list[str]:
    """A table's rows as columns padded to their widest cell, the header underlined."""
    if not rows:
        return []
    columns = max(len(row) for row in rows)
    rows = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(len(row[c]) for row in rows) for c in range(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    return [line(rows[0]), line(["-" * width for width in widths]),
            *(line(row) for row in rows[1:])]


def inline_text(children: Sequence[Token], soft: str = " ") -> str:
    parts: list[str] = []
    links: list[str] = []
    for index, token in enumerate(children):
        if token.type in ("text", "code_inline"):
            parts.append(token.content)
        elif token.type == "softbreak":
            parts.append(soft)
        elif token.type == "hardbreak":
            parts.append("\n")
        elif token.type == "image":
            words = inline_text(token.children or [])
            parts.append(f"[picture: {words}]" if words else "[picture]")
        elif token.type == "link_open":
            links.append(str(token.attrGet("href") or ""))
        elif token.type == "link_close":
            href, words = (links.pop() if links else ""), _words_before(children, index)
            if href and href not in (words, f"mailto:{words}"):
                parts.append(f" ({href})")
    return "".join(parts)
