"""Messages: a conversation's stored history as the messages of one Messages API request.

In: history entries (`HistoryItem`), the task's mail (and what can be shown of its attachments),
the conversation's fence nonce. Out: API-shaped messages, valid for the API however the history
was left (`valid_messages`), with the latest compaction block as their start, within the API's
bounds on images and PDF pages (older ones give way to a note), and one cache breakpoint at
their end; their token estimate, images and PDFs counted as the API counts them. Pure: no I/O,
no SDK. It must never present the owner's mail data as instructions (it is fenced, images and
PDFs included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mailagent.content import fence, fence_close, fence_open, neutralise
from mailagent.store import HistoryItem, TaskWork
from mailagent.store.repair import valid_messages
from mailagent.tools import ToolError
from mailagent.tools.media import (
    MAX_IMAGES_PER_REQUEST,
    MAX_MEDIA_BASE64_PER_REQUEST,
    MAX_PDF_PAGES_PER_REQUEST,
    Media,
    base64_source,
    block_tokens,
    pdf_block_pages,
)

CHARS_PER_TOKEN = 3  # conservative: real tokenizers average closer to 4 characters per token


# Chinese, Japanese and Korean scripts (and the blocks after them) run about a token a
# character, where Latin text runs three to four characters a token.
_WIDE = re.compile("[\u2e80-\U0010ffff]")


def estimate_tokens(value: Any) -> int:
    """A conservative token count: a third of the characters, and one per wide character; an
    image or PDF block what the API charges for it (tools/media.py), not its base64 text."""
    media = 0

    def plain(node: Any) -> Any:
        nonlocal media
        if isinstance(node, dict):
            tokens = block_tokens(node)
            if tokens is not None:
                media += tokens
                return None
            return {key: plain(item) for key, item in node.items()}
        if isinstance(node, list):
            return [plain(item) for item in node]
        return node

    text = json.dumps(plain(value), ensure_ascii=False)
    narrow = len(_WIDE.sub("", text))
    return narrow // CHARS_PER_TOKEN + (len(text) - narrow) + 1 + media


Show = Callable[[dict[str, Any]], "Media | str | None"]


def fenced_media(kind: str, media: Media, nonce: str,
                 **labels: str | int) -> list[dict[str, Any]]:
    """An image or PDF as data: a text block opening the fence and saying what it is, its
    blocks, and a text block closing the fence. Words inside the picture stay data."""
    return [{"type": "text", "text": f"{fence_open(kind, nonce, **labels)}\n"
             f"{neutralise(media.text)}"},
            *media.blocks, {"type": "text", "text": fence_close(nonce)}]


class Room:
    """What is left of one request's bounds on images, PDF pages and their bytes."""

    def __init__(self) -> None:
        self.images = self.pages = self.chars = 0

    def take(self, blocks: list[dict[str, Any]]) -> str | None:
        """Count `blocks` in if they fit; else why not (and nothing is counted)."""
        images = sum(1 for b in blocks if b.get("type") == "image")
        pages = sum(pdf_block_pages(b) for b in blocks if b.get("type") == "document")
        chars = sum(len(found[1]) for b in blocks if (found := base64_source(b)))
        if self.images + images > MAX_IMAGES_PER_REQUEST:
            return f"at most {MAX_IMAGES_PER_REQUEST} images go in one request"
        if self.pages + pages > MAX_PDF_PAGES_PER_REQUEST:
            return f"at most {MAX_PDF_PAGES_PER_REQUEST} PDF pages go in one request"
        if self.chars + chars > MAX_MEDIA_BASE64_PER_REQUEST:
            return (f"at most {MAX_MEDIA_BASE64_PER_REQUEST // 2**20} MB of images and PDFs "
                    "go in one request")
        self.images, self.pages, self.chars = (self.images + images, self.pages + pages,
                                               self.chars + chars)
        return None


def _attachment(attachment: dict[str, Any], show: Show, nonce: str,
                room: Room) -> tuple[str, list[dict[str, Any]]]:
    """The fenced text of one attachment, or its image or PDF blocks in a fence."""
    labels: dict[str, str | int] = {
        "path": attachment["path"], "name": attachment["original_name"],
        "type": attachment["content_type"], "size": attachment["size"]}
    try:
        seen = show(attachment)
    except ToolError as exc:
        return fence("attachment", f"saved in the workspace, but it cannot be shown: {exc}",
                     nonce, **labels), []
    if isinstance(seen, Media):
        refused = room.take(list(seen.blocks))
        if refused is None:
            return "", fenced_media("attachment", seen, nonce, **labels)
        return fence("attachment", f"saved in the workspace; not shown here: {refused}; "
                     "read it with read_file in a later step", nonce, **labels), []
    if isinstance(seen, str):
        return fence("attachment", seen, nonce, **labels), []
    return fence("attachment", "saved in the workspace; read it with read_file", nonce,
                 **labels), []


def task_content(work: TaskWork, nonce: str, show: Show | None = None) -> list[dict[str, Any]]:
    """The task's first message: the owner's words as the instruction and everything else of
    the mail as fenced data, the subject included (a forward's subject is the stranger's:
    "Fwd: ..."); images and PDFs attached to it follow as their blocks, each in its fence, and
    calendars and contact cards come as their text."""
    parts = [f"New task #{work.task_id} from the owner:",
             work.instruction or "(no typed text: the owner wrote only the mail subject below)"]
    data = work.data
    if work.subject:
        parts.append(fence("mail-subject", work.subject, nonce))
    if data.get("scheduled_task"):  # model-written when the schedule was made by mail (S5)
        parts.append(fence("scheduled-task", data["scheduled_task"], nonce))
    if data.get("quoted_text"):
        parts.append(fence("quoted-mail", data["quoted_text"], nonce))
    for forwarded in data.get("forwarded", []):
        parts.append(fence("forwarded-mail", forwarded, nonce))
    shown: list[dict[str, Any]] = []
    room = Room()
    for attachment in data.get("attachments", []):
        text, blocks = _attachment(attachment, show or (lambda _a: None), nonce, room)
        parts += [text] if text else []
        shown += blocks
    return [{"type": "text", "text": "\n\n".join(parts)}, *shown]


def task_message(work: TaskWork, nonce: str) -> str:
    """The text of the task's first message, without what is shown of its attachments."""
    return str(task_content(work, nonce)[0]["text"])


def bounded_media(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with their images and PDFs within one request's bounds: the newest are
    kept, and each older one that does not fit becomes a note saying so (the API refuses a
    request past them, and a conversation must stay usable however many were shown)."""
    room = Room()

    def kept(block: Any) -> Any:
        if base64_source(block) is None:
            if isinstance(block, dict) and isinstance(block.get("content"), list):
                return {**block, "content": [kept(b) for b in reversed(block["content"])][::-1]}
            return block
        refused = room.take([block])
        if refused is None:
            return block
        return {"type": "text", "text": "[an image or PDF shown earlier is left out of this "
                f"request: {refused}; read the file again if it is needed]"}

    newest_first = [{**m, "content": [kept(b) for b in reversed(m["content"])][::-1]}
                    for m in reversed(messages)]
    return newest_first[::-1]


def has_compaction(item: HistoryItem) -> bool:
    """Whether the entry holds a compaction block with a summary: one whose content is null
    (the endpoint failed to summarise) stands for nothing, so it never becomes the start."""
    return item.role == "assistant" and any(
        isinstance(b, dict) and b.get("type") == "compaction" and b.get("content") is not None
        for b in item.content)


def to_messages(items: list[HistoryItem], nonce: str) -> list[dict[str, Any]]:
    """History entries as API messages: consecutive turns of one role merged, summary fenced.

    Entries before the latest server-side compaction block are left out: the endpoint would
    ignore them anyway, and the request size is then what the endpoint really reads.
    """
    compacted = [i for i, item in enumerate(items) if has_compaction(item)]
    if compacted:
        items = items[compacted[-1]:]
    messages: list[dict[str, Any]] = []
    for item in items:
        if item.kind == "summary":
            content = [{"type": "text", "text": "What happened earlier in this conversation:\n"
                        + fence("conversation-summary", item.content, nonce)}]
        else:
            content = list(item.content)
        if messages and messages[-1]["role"] == item.role:
            messages[-1]["content"] = [*messages[-1]["content"], *content]
        else:
            messages.append({"role": item.role, "content": content})
    return bounded_media(valid_messages(messages))


def without_compaction(messages: list[dict[str, Any]], nonce: str) -> list[dict[str, Any]]:
    """The messages for an endpoint that does not take the compaction beta (it refuses a
    compaction block as an unknown type): each block becomes its summary as text, fenced as a
    client-side summary is; one without a summary is left out."""
    plain: list[dict[str, Any]] = []
    for message in messages:
        content: list[Any] = []
        for block in message["content"]:
            if not (isinstance(block, dict) and block.get("type") == "compaction"):
                content.append(block)
            elif block.get("content"):
                content.append({"type": "text", "text": "What happened earlier in this "
                                "conversation:\n" + fence("conversation-summary",
                                                          str(block["content"]), nonce)})
        plain.append({**message, "content": content})
    return valid_messages(plain)


def with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy whose last block carries cache_control, so the next request reuses this prefix."""
    if not messages:
        return messages
    last = dict(messages[-1])
    blocks = [dict(b) for b in last["content"]]
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    last["content"] = blocks
    return [*messages[:-1], last]


def tool_uses(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block for block in content if block.get("type") == "tool_use"]


def text_of(content: list[dict[str, Any]]) -> str:
    return "\n\n".join(b["text"] for b in content if b.get("type") == "text").strip()
