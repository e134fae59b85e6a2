"""Token accounting of the Messages API double: prompt blocks, token counts, the prompt cache.

An approximation, deterministic and good enough to prove that prompt caching is *wired up*,
not to predict real bills:

* The prompt is flattened into blocks in the real prefix order: each tool
  definition, then the system prompt (a string counts as one text block), then
  every content block of every message (a string ``content`` is one text block).
  Each block is serialised as compact, key-sorted JSON *without* its
  ``cache_control`` key, together with its section/role.  A prefix "costs"
  ``cumulative characters // 4`` tokens; the whole prompt costs at least 1.
  ``count_tokens`` returns exactly that total.
* A block carrying ``cache_control`` is a breakpoint; the top-level
  ``cache_control`` request parameter puts a breakpoint on the last block.  For
  each request the server looks for the longest prefix, ending at most
  :attr:`ModelServer.cache_lookback_blocks` (20, like the real API) blocks before
  some breakpoint, that an *earlier* request wrote (same model, same serialised
  prefix): its tokens are ``cache_read_input_tokens``.  The remainder up to the
  last breakpoint is ``cache_creation_input_tokens``; everything after it is
  ``input_tokens``.  Every breakpoint prefix is then written.  Entries never
  expire (no TTL); :meth:`ModelServer.clear_cache` forgets them.  Prefixes under
  :attr:`ModelServer.min_cacheable_tokens` (default 0; real models need ~1024+)
  are neither read nor written.  Only ``model`` and the prompt blocks are part of
  the cache key (not ``tool_choice``, ``thinking``, ...).
* ``output_tokens`` is ``len(json.dumps(content)) // 4`` (at least 1).
* An image or PDF block counts what the API charges for it (``api_media.media_tokens``:
  width*height/750 for an image), not its base64 text.
* Every field can be overridden per reply with ``usage={...}``.

With server-side compaction on, message blocks before the last ``compaction`` block are left
out of the estimate, as the API drops them (``drop_before_compaction``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.api_media import media_tokens

__all__ = ["PromptBlock", "PromptCache", "count_tokens", "output_tokens", "prompt_blocks"]


@dataclass(frozen=True)
class PromptBlock:
    serialized: str
    breakpoint: bool


def _strip_cache_control(block: object) -> object:
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _has_cache_control(block: object) -> bool:
    return isinstance(block, dict) and block.get("cache_control") is not None


def _costed(block: object) -> object:
    """``block`` with each image or PDF in it replaced by text as long as its tokens."""
    if isinstance(block, dict):
        tokens = media_tokens(block)
        if tokens is not None:
            return {"type": block["type"], "cost": "x" * (4 * tokens)}
        return {k: _costed(v) for k, v in block.items()}
    if isinstance(block, list):
        return [_costed(v) for v in block]
    return block


def _serialize(section: str, block: object) -> str:
    return json.dumps(
        [section, _costed(_strip_cache_control(block))],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def prompt_blocks(body: Mapping[str, Any], drop_before_compaction: bool) -> list[PromptBlock]:
    """The prompt of ``body`` as blocks in prefix order (see the module docstring)."""
    raw: list[tuple[str, object]] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        raw.extend(("tool", tool) for tool in tools)
    system = body.get("system")
    if isinstance(system, str):
        raw.append(("system", {"type": "text", "text": system}))
    elif isinstance(system, list):
        raw.extend(("system", block) for block in system)
    message_blocks: list[tuple[str, object]] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role", ""))
        content = message.get("content")
        if isinstance(content, str):
            message_blocks.append((role, {"type": "text", "text": content}))
        elif isinstance(content, list):
            message_blocks.extend((role, block) for block in content)
    if drop_before_compaction:
        last = max(
            (
                i
                for i, (_, b) in enumerate(message_blocks)
                if isinstance(b, dict) and b.get("type") == "compaction"
            ),
            default=0,
        )
        message_blocks = message_blocks[last:]
    raw.extend(message_blocks)
    blocks = [PromptBlock(_serialize(s, b), _has_cache_control(b)) for s, b in raw]
    if body.get("cache_control") is not None and blocks:
        blocks[-1] = PromptBlock(blocks[-1].serialized, True)
    return blocks


def tokens(chars: int) -> int:
    return chars // 4


def output_tokens(content: Sequence[Mapping[str, Any]]) -> int:
    return max(1, tokens(len(json.dumps(list(content)))))


def count_tokens(body: Mapping[str, Any], drop_before_compaction: bool) -> int:
    """The input-token estimate for a request body (what ``count_tokens`` answers)."""
    blocks = prompt_blocks(body, drop_before_compaction=drop_before_compaction)
    return max(1, tokens(sum(len(b.serialized) for b in blocks)))


class PromptCache:
    """The prefixes earlier requests wrote, by model and digest of the serialised prefix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: set[tuple[str, str]] = set()

    def clear(self) -> None:
        with self._lock:
            self._written.clear()

    def usage(
        self,
        body: Mapping[str, Any],
        model: str,
        *,
        drop_before_compaction: bool,
        min_cacheable_tokens: int,
        lookback_blocks: int,
    ) -> dict[str, Any]:
        """Input/cache usage per the approximation in the module docstring; writes every
        breakpoint prefix of ``body``."""
        blocks = prompt_blocks(body, drop_before_compaction=drop_before_compaction)
        cumulative, digests = _prefixes(blocks)
        total = max(1, tokens(cumulative[-1]))
        ends = [i + 1 for i, b in enumerate(blocks) if b.breakpoint]
        ends = [e for e in ends if tokens(cumulative[e]) >= min_cacheable_tokens]
        read = creation = 0
        if ends:
            last = ends[-1]
            candidates: set[int] = set()
            for end in ends:
                candidates.update(range(max(1, end - lookback_blocks), end + 1))
            with self._lock:
                hit = max((e for e in candidates if (model, digests[e]) in self._written),
                          default=0)
                self._written.update((model, digests[e]) for e in ends)
            read = tokens(cumulative[hit])
            creation = tokens(cumulative[last]) - read
        return {
            "input_tokens": max(0, total - read - creation),
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
            "output_tokens": 0,
        }


def _prefixes(blocks: Sequence[PromptBlock]) -> tuple[list[int], list[str]]:
    """For each prefix of ``blocks`` (the empty one first): its characters and its digest."""
    cumulative = [0]
    digests = [""]
    hasher = hashlib.sha256()
    for block in blocks:
        cumulative.append(cumulative[-1] + len(block.serialized))
        hasher.update(block.serialized.encode())
        hasher.update(b"\x00")
        digests.append(hasher.copy().hexdigest())
    return cumulative, digests
