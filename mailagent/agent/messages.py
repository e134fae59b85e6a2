"""Messages: a conversation's stored history as the messages of one Messages API request.

In: history entries (`HistoryItem`), the task's mail, the conversation's fence nonce. Out:
API-shaped messages, valid for the API however the history was left (`valid_messages`), with
the latest compaction block as their start and one cache breakpoint at their end. Pure: no
I/O, no SDK. It must never present the owner's mail data as instructions (it is fenced).
"""

from __future__ import annotations

import json
import re
from typing import Any

from mailagent.content import fence
from mailagent.store import HistoryItem, TaskWork
from mailagent.store.repair import valid_messages

CHARS_PER_TOKEN = 3  # conservative: real tokenizers average closer to 4 characters per token


# Chinese, Japanese and Korean scripts (and the blocks after them) run about a token a
# character, where Latin text runs three to four characters a token.
_WIDE = re.compile("[\u2e80-\U0010ffff]")


def estimate_tokens(value: Any) -> int:
    """A conservative token count: a third of the characters, and one per wide character."""
    text = json.dumps(value, ensure_ascii=False)
    narrow = len(_WIDE.sub("", text))
    return narrow // CHARS_PER_TOKEN + (len(text) - narrow) + 1


def task_message(work: TaskWork, nonce: str) -> str:
    """The owner's words as the instruction; everything else of the mail as fenced data, the
    subject included (a forward's subject is the stranger's: "Fwd: ...")."""
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
    for attachment in data.get("attachments", []):
        parts.append(fence("attachment", "saved in the workspace; read it with read_file",
                           nonce, path=attachment["path"], name=attachment["original_name"],
                           type=attachment["content_type"], size=attachment["size"]))
    return "\n\n".join(parts)


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
    return valid_messages(messages)


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
