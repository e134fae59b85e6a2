"""Agent: the Claude tool loop over one task of a persistent conversation.

In: a claimed task (`TaskWork`) and a `TaskContext` from the service (system prompt, tools, and
`check`, the policy decision for a call). Out: an `Outcome` (done, failed, waiting for approval,
or deferred after overload). Side effects: model requests through the `anthropic` SDK; after
every model turn and every tool result the history and usage are committed, so a task resumes
after its last completed step. The only importer of anthropic, and only when a task or a check
first needs it: a daemon that waits for mail does not carry the SDK (tens of MiB).
It must never run a tool call that `check` did not allow, never repeat a completed tool call on
resume, and never send a request larger than `model.max_context_tokens`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from mailagent.agent.api import (
    TRANSIENT_ERRORS,
    _count,
    _error_type,
    account_limit,
    is_compaction_unsupported,
    retry_after,
    tool_betas,
    tool_definitions,
)
from mailagent.agent.context import SUMMARY_PROMPT, BoundedContext
from mailagent.agent.messages import (
    fenced_media,
    task_content,
    text_of,
    tool_uses,
    with_cache_breakpoint,
    without_compaction,
)
from mailagent.agent.prices import (
    CACHE_READ_FACTOR,
    CACHE_WRITE_FACTOR,
    WEB_SEARCH_USD,
    model_price,
)
from mailagent.agent.task import Outcome, TaskContext
from mailagent.agent.web import cited_answer, over_web_limit, server_tools, web_requests
from mailagent.config import (
    COMPACTION_MIN_TRIGGER_TOKENS,
    AgentSettings,
    ModelSettings,
    is_server_compaction_possible,
)
from mailagent.content import fence
from mailagent.errors import ModelError
from mailagent.failpoints import failpoint
from mailagent.policy.binding import Binding
from mailagent.store import HistoryItem, Store, Usage
from mailagent.store.repair import valid_messages, without_empty_text
from mailagent.tools.files import ToolError
from mailagent.tools.media import Media

if TYPE_CHECKING:
    import anthropic


log = logging.getLogger(__name__)


# Server-side compaction is asked for at half the budget (never under the API's minimum); where
# the endpoint takes it, the client side compacts only at the backstop, so the endpoint
# compacts first; one that ignores the request is still bounded by the client side.
SERVER_COMPACT_AT = 0.5


COMPACT_BETA = "compact-2026-01-12"


CUT_STOPS = ("max_tokens", "model_context_window_exceeded")  # the turn ended mid-answer


def _import_sdk() -> None:
    importlib.import_module("anthropic.lib.tools")  # the SDK, and what agent/api.py uses


class Agent(BoundedContext):
    """Runs tasks; one instance per service, shared by concurrent tasks."""

    def __init__(self, model: ModelSettings, budgets: AgentSettings, store: Store,
                 failpoint_name: str | None = None) -> None:
        self.model, self.budgets, self.store = model, budgets, store
        self.failpoint_name = failpoint_name
        self.price = model_price(model)
        # None: not known yet whether the endpoint takes server-side compaction ("auto").
        self.server_compaction: bool | None = {"server": True, "client": False}.get(
            model.compaction)
        if not is_server_compaction_possible(model.max_context_tokens):
            self.server_compaction = False  # the budget is too small for the API's trigger
        self._client: anthropic.AsyncAnthropic | None = None
        self._sdk_loading = asyncio.Lock()
        self._sdk_loaded = False

    async def load_sdk(self) -> None:
        """Import the SDK off the event loop, once: it takes about a second, during which the
        other conversations' tasks, intake and the outbox go on instead of waiting for it."""
        if self._sdk_loaded:
            return
        async with self._sdk_loading:
            if not self._sdk_loaded:
                await asyncio.to_thread(_import_sdk)
                self._sdk_loaded = True

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK's client, made (and the SDK imported) at the first request."""
        if self._client is None:
            import anthropic

            model = self.model
            self._client = anthropic.AsyncAnthropic(
                api_key=model.api_key or ("not-needed" if model.base_url else None),
                base_url=model.base_url, timeout=model.timeout_seconds,
                max_retries=model.max_retries,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def work(self, ctx: TaskContext) -> Outcome:
        """Run one task from wherever its history stands until it ends or has to wait. The
        history is read once, then extended with what the task appends (read again only after
        a compaction): parsing a long conversation at every step made a backlog crawl."""
        work = ctx.work
        cid = work.conversation_id
        await self.load_sdk()
        items = self.store.history(cid)
        if not any(item.task_id == work.task_id for item in items):
            # Images and PDFs of the mail are read and scaled off the event loop.
            content = await asyncio.to_thread(task_content, work, ctx.nonce, ctx.show)
            items.append(self.append(cid, work.task_id, "user", content))
        # Off the loop too: the first schemas of a tool take tens of milliseconds each.
        tools = await asyncio.to_thread(tool_definitions, ctx.tools)
        paused = False  # a pause_turn: the turn goes on, sent back as it stands
        while True:
            last = items[-1]
            if last.role == "assistant" and last.task_id == work.task_id and not paused:
                step = await self.after_turn(ctx, items)
                if isinstance(step, Outcome):
                    return step
                items.append(step)
                continue
            refusal = self.over_budget(work.task_id)
            if refusal:
                # A task's own budget pauses it (the owner may grant more); the daily cap ends it.
                state = "failed" if "daily_cost_usd" in refusal else "paused"
                return Outcome(state, refusal, self.partial_text(cid, work.task_id))
            messages, compacted = await self.fit_context(ctx, tools, items)
            if compacted:
                items = self.store.history(cid)
            # The web tools follow the policy in force and the uses left (SECURITY.md E4).
            web, betas = server_tools(ctx.internet(), self.store.task_work(work.task_id))
            turn = await self.turn(ctx, [*tools, *web], messages, [*tool_betas(tools), *betas])
            if isinstance(turn, Outcome):
                return turn
            items.append(turn[0])
            paused = turn[1] == "pause_turn" and not tool_uses(turn[0].content)

    async def after_turn(self, ctx: TaskContext,
                         items: list[HistoryItem]) -> HistoryItem | Outcome:
        """The task's answer, or the results of the last turn's calls (stored), or why it
        stops here."""
        calls = tool_uses(items[-1].content)
        if not calls:
            return self.answer(ctx, items)
        results = await self.run_tools(ctx, calls)
        if isinstance(results, Outcome):
            return results
        return self.append(ctx.work.conversation_id, ctx.work.task_id, "user", results)

    @staticmethod
    def answer(ctx: TaskContext, items: list[HistoryItem]) -> Outcome:
        """The task's answer: its last assistant message (the turns a pause_turn split, taken
        together), with its cited passages marked and their sources numbered."""
        content: list[dict[str, Any]] = []
        for item in reversed(items):
            if item.role != "assistant" or item.task_id != ctx.work.task_id:
                break
            content[:0] = [b for b in item.content if isinstance(b, dict)]
        text, sources = cited_answer(content)
        return Outcome("done", "answered", text, sources=sources)

    def append(self, cid: int, task_id: int, role: str, content: list[Any]) -> HistoryItem:
        return HistoryItem(self.store.append_history(cid, task_id, role, content), task_id,
                           role, "message", content)

    async def turn(self, ctx: TaskContext, tools: list[dict[str, Any]],
                   messages: list[dict[str, Any]],
                   betas: list[str] | None = None) -> tuple[HistoryItem, str] | Outcome:
        """One model request; its answer and usage are committed before anything acts on it.
        A refusal ends the task (its turn is not kept); a cut turn's calls are refused first;
        a turn whose web uses pass the policy is kept, and the task ends there."""
        work = ctx.work
        system = [{"type": "text", "text": ctx.system, "cache_control": {"type": "ephemeral"}}]
        message = await self.request_compacting(ctx.nonce, system=system, tools=tools,
                                                messages=with_cache_breakpoint(messages),
                                                betas=betas or [])
        usage = self.usage(message.usage)
        self.store.add_usage(work.task_id, usage)
        stop = str(message.stop_reason or "end_turn")
        if stop == "refusal":
            return self.declined(ctx, message)
        content = without_empty_text(
            [b.model_dump(mode="json", exclude_none=True) for b in message.content])
        if stop in CUT_STOPS:
            self.refuse_cut_calls(ctx, content, stop)
        item = self.append(work.conversation_id, work.task_id, "assistant",
                           content or [{"type": "text", "text": "(no answer)"}])
        failpoint(self.failpoint_name, "after-model")  # the turn is committed, no tool ran yet
        if usage.web_search_requests or usage.web_fetch_requests:
            # max_uses bounds one request; the task's bound is kept here, whatever the
            # endpoint did: none of this turn's calls runs (they are answered as not run).
            limit = over_web_limit(ctx.internet(), self.store.task_work(work.task_id))
            if limit:
                return Outcome("failed", limit, text_of(content))
        return item, stop

    def refuse_cut_calls(self, ctx: TaskContext, content: list[dict[str, Any]],
                         stop: str) -> None:
        """A turn cut off (as the SDK's tool runner does, nothing of it runs): each call is
        recorded as refused before the turn is stored, so not even a resume runs it."""
        if not tool_uses(content):
            content.append({"type": "text", "text": f"[the answer was cut off: {stop}]"})
        why = (f"not run: your answer was cut off ({stop}) before it was complete, so none of "
               "its calls ran. Send it again in smaller pieces (for a long file, write a first "
               "part, then add the rest with edit_file).")
        for call in tool_uses(content):
            if not isinstance(call.get("input"), dict):
                call["input"] = {}
            self.store.record_tool_decision(ctx.work.task_id, call["id"], call["name"],
                                            call["input"], "deny", "cut off", why)
            self.store.set_tool_call(ctx.work.task_id, call["id"], "failed", {
                "type": "tool_result", "tool_use_id": call["id"], "content": why,
                "is_error": True})

    def declined(self, ctx: TaskContext, message: Any) -> Outcome:
        """The model refused: the task ends with its reason. What it wrote before refusing is
        dropped (a partial call among it); a note stands for the turn, so the next request is
        valid and the model knows it declined."""
        details = getattr(message, "stop_details", None)
        explanation = getattr(details, "explanation", None) or getattr(details, "category", None)
        reason = f"the model declined the task: {explanation or 'it gave no reason'}"
        self.append(ctx.work.conversation_id, ctx.work.task_id, "assistant",
                    [{"type": "text", "text": f"[{reason}]"}])
        return Outcome("failed", reason)

    async def request_compacting(self, nonce: str, betas: list[str] | None = None,
                                 **params: Any) -> Any:
        """A model turn that asks for server-side compaction where the endpoint takes it; where
        it does not, compaction blocks already in the history go as their summaries. `betas`
        are those the request's tools need (web fetch)."""
        betas = betas or []
        plain = {**params, "messages": without_compaction(params["messages"], nonce)}
        if betas:
            plain |= {"beta": True, "betas": betas}
        if self.server_compaction is False:
            return await self.request(**plain)
        trigger = max(COMPACTION_MIN_TRIGGER_TOKENS,
                      int(self.model.max_context_tokens * SERVER_COMPACT_AT))
        # The same instructions as the client side's summary: the endpoint's own default
        # keeps less of what a later task needs (paths, what is unfinished).
        edits = [{"type": "compact_20260112", "instructions": SUMMARY_PROMPT,
                  "trigger": {"type": "input_tokens", "value": trigger}}]
        try:
            message = await self.request(beta=True, betas=[COMPACT_BETA, *betas],
                                         context_management={"edits": edits}, **params)
            self.server_compaction = True
        except ModelError as exc:
            if self.server_compaction is None and is_compaction_unsupported(exc):
                log.info("the endpoint refused server-side compaction; compacting client-side")
                self.server_compaction = False
                return await self.request(**plain)
            raise
        return message

    async def request(self, beta: bool = False, **params: Any) -> Any:
        """A Messages API call; failures become ModelError, transient or not."""
        import anthropic

        params = {"model": self.model.name, "max_tokens": self.model.max_output_tokens, **params}
        params["messages"] = valid_messages(params["messages"])  # the one gate (SECURITY.md L7)
        if not params.get("tools"):
            params.pop("tools", None)
        api: Any = self.client.beta.messages if beta else self.client.messages
        try:
            if self.model.stream:
                async with api.stream(**params) as stream:
                    return await stream.get_final_message()
            return await api.create(**params)
        except anthropic.APIStatusError as exc:
            if (limit := account_limit(exc)) is not None:
                raise ModelError(limit, transient=True, status_code=exc.status_code,
                                 account_limit=True) from exc
            if isinstance(exc, anthropic.RateLimitError | anthropic.InternalServerError) or \
                    _error_type(exc) in TRANSIENT_ERRORS:
                raise ModelError(f"the model endpoint is busy or unreachable: {exc}",
                                 transient=True, retry_after=retry_after(exc)) from exc
            raise ModelError(f"the model endpoint refused the request "
                             f"({exc.status_code}): {exc.message}",
                             status_code=exc.status_code) from exc
        except anthropic.APIConnectionError as exc:
            raise ModelError(f"the model endpoint is busy or unreachable: {exc}",
                             transient=True) from exc
        except anthropic.AnthropicError as exc:
            raise ModelError(f"model request failed: {exc}") from exc

    def usage(self, usage: Any) -> Usage:
        """Tokens and cost of one response. With server-side compaction the top-level figures
        are the message's alone and `usage.iterations` lists every sampling, the compaction's
        included (https://docs.claude.com/en/docs/build-with-claude/compaction): then the
        iterations are what is billed."""
        parts = list(getattr(usage, "iterations", None) or []) or [usage]
        tokens_in, tokens_out, read, write = (
            sum(_count(part, name) for part in parts)
            for name in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                         "cache_creation_input_tokens"))
        price_in, price_out = self.price.input_usd_per_mtok / 1e6, \
            self.price.output_usd_per_mtok / 1e6
        searches, fetches = web_requests(usage)
        cost = (tokens_in * price_in + write * price_in * CACHE_WRITE_FACTOR
                + read * price_in * CACHE_READ_FACTOR + tokens_out * price_out
                + searches * WEB_SEARCH_USD)
        return Usage(tokens_in, tokens_out, read, write, cost, searches, fetches)

    def partial_text(self, conversation_id: int, task_id: int) -> str:
        """The model's latest words in this task, to show what was done before it stopped."""
        for item in reversed(self.store.history(conversation_id)):
            if item.task_id == task_id and item.role == "assistant" and text_of(item.content):
                return text_of(item.content)
        return ""

    def over_budget(self, task_id: int) -> str:
        """Why this task may not make another model request, or ''. Each `continue` from the
        owner grants one more budget of the same size."""
        work, b = self.store.task_work(task_id), self.budgets
        steps = 1 + work.budget_steps
        if work.turns >= b.max_turns * steps:
            return f"budget: the task used {work.turns} model turns (agent.max_turns)"
        if work.tokens >= b.max_task_tokens * steps:
            return f"budget: the task used {work.tokens} tokens (agent.max_task_tokens)"
        if work.cost_usd >= b.max_task_cost_usd * steps:
            return f"budget: the task cost ${work.cost_usd:.2f} (agent.max_task_cost_usd)"
        since = datetime.now(UTC) - timedelta(days=1)
        if self.store.cost_since(since) >= b.daily_cost_usd:
            return f"budget: ${b.daily_cost_usd:.2f} spent in 24 hours (agent.daily_cost_usd)"
        return ""

    async def run_tools(self, ctx: TaskContext,
                        calls: list[dict[str, Any]]) -> list[dict[str, Any]] | Outcome:
        """Results for every call of one model turn, or the reason the task must stop here."""
        results = []
        for call in calls:
            result = await self.run_tool(ctx, call)
            if isinstance(result, Outcome):
                return result
            results.append(result)
        return results

    async def run_tool(self, ctx: TaskContext, call: dict[str, Any]) -> dict[str, Any] | Outcome:
        tool_use_id, name, tool_input = call["id"], call["name"], call.get("input") or {}
        seen = self.store.tool_call(ctx.work.task_id, tool_use_id)
        if seen is not None and seen.state in ("done", "failed", "denied"):
            completed: dict[str, Any] = seen.result  # done before a restart: never run it twice
            return completed
        if seen is not None and seen.state == "started":
            text = "interrupted by a restart before it finished: check the state, then retry"
            return self.finish_call(ctx, tool_use_id, text, error=True)
        if seen is not None and seen.state == "waiting":
            return Outcome("waiting_approval", f"{name} waits for the owner's approval",
                           call=call)
        if seen is not None and seen.state == "approved":
            return await self.run_approved(ctx, tool_use_id, name, tool_input)
        refusal = self.call_budget(ctx, name, tool_input)
        if refusal:
            if refusal.startswith("fail:"):
                return Outcome("failed", refusal.removeprefix("fail:"))
            self.store.record_tool_decision(ctx.work.task_id, tool_use_id, name, tool_input,
                                            "deny", "budget", refusal)
            return self.finish_call(ctx, tool_use_id, refusal, error=True)
        return await self.decide_and_run(ctx, tool_use_id, name, tool_input)

    async def decide_and_run(self, ctx: TaskContext, tool_use_id: str, name: str,
                             tool_input: dict[str, Any]) -> dict[str, Any] | Outcome:
        decision = ctx.check(name, tool_input)
        self.store.record_tool_decision(ctx.work.task_id, tool_use_id, name, tool_input,
                                        decision.verdict, decision.rule, decision.reason)
        if decision.verdict == "deny":
            text = f"denied by {decision.rule}: {decision.reason}"
            return self.finish_call(ctx, tool_use_id, text, error=True)
        if decision.verdict == "ask":
            return Outcome("waiting_approval", f"{name} needs approval: {decision.reason}",
                           call={"id": tool_use_id, "name": name, "input": tool_input})
        self.store.set_tool_call(ctx.work.task_id, tool_use_id, "started")
        return await self.execute(ctx, tool_use_id, name, tool_input, approved=None)

    async def run_approved(self, ctx: TaskContext, tool_use_id: str, name: str,
                           tool_input: dict[str, Any]) -> dict[str, Any]:
        """An approved call, re-checked just before it runs (SECURITY.md A1)."""
        approval = self.store.approval_for(ctx.work.task_id, tool_use_id)
        decision = ctx.check(name, tool_input)
        binding = ctx.bind(name, tool_input)
        if approval is None or approval.state != "approved":
            text = "this call has no approval from the owner"
        elif decision.verdict == "deny":
            text = f"denied by {decision.rule}: {decision.reason}"
        elif binding.digest != approval.digest:
            text = "the file changed after the owner approved; nothing was done"
        else:
            self.store.set_tool_call(ctx.work.task_id, tool_use_id, "started")
            return await self.execute(ctx, tool_use_id, name, tool_input, approved=binding)
        return self.finish_call(ctx, tool_use_id, text, error=True)

    async def execute(self, ctx: TaskContext, tool_use_id: str, name: str,
                      tool_input: dict[str, Any], approved: Binding | None
                      ) -> dict[str, Any]:
        function = ctx.tools[name]
        changes: list[dict[str, Any]] = getattr(getattr(function, "__self__", None), "changes", [])
        before = len(changes)

        from anthropic import beta_tool

        def call() -> str | Media:
            ctx.set_approved(approved)
            try:
                spec = getattr(function, "tool_spec", {})  # MCP tools: the server's schema
                output = beta_tool(cast(Any, function), **spec).call(tool_input)
                return output if isinstance(output, Media) else str(output)
            finally:
                ctx.set_approved(None)

        text: str | Media
        try:
            text, error = await asyncio.to_thread(call), False
        except ToolError as exc:
            text, error = str(exc), True
        except (OSError, ValueError, TypeError) as exc:  # bad input or a file system refusal
            text, error = f"{type(exc).__name__}: {exc}", True
        failpoint(self.failpoint_name, "mid-tool")  # done on disk, not yet recorded
        change = changes[before] if len(changes) > before else None
        return self.finish_call(ctx, tool_use_id, text, error=error, change=change)

    def finish_call(self, ctx: TaskContext, tool_use_id: str, text: str | Media, *,
                    error: bool, change: dict[str, Any] | None = None) -> dict[str, Any]:
        """The call's result, fenced as data (an image or PDF between the fence's two text
        blocks: tool_result content may hold text, image and document blocks), recorded."""
        result: dict[str, Any] = {
            "type": "tool_result", "tool_use_id": tool_use_id,
            "content": fenced_media("tool-output", text, ctx.nonce) if isinstance(text, Media)
            else fence("tool-output", text, ctx.nonce),
        }
        if error:
            result["is_error"] = True
        self.store.set_tool_call(ctx.work.task_id, tool_use_id, "failed" if error else "done",
                                 result, change)
        self.store.add_usage(ctx.work.task_id, Usage(), tool_calls=1)
        failpoint(self.failpoint_name, "after-tool")
        return result

    def call_budget(self, ctx: TaskContext, name: str, tool_input: dict[str, Any]) -> str:
        """'' if this call may go ahead; 'fail:...' ends the task; other text refuses the call."""
        work = self.store.task_work(ctx.work.task_id)
        if work.tool_calls >= self.budgets.max_tool_calls:
            return f"fail:budget: the task made {work.tool_calls} tool calls (agent.max_tool_calls)"
        if name not in ctx.tools and ctx.check(name, tool_input).verdict != "deny":
            return f"there is no tool named {name!r}"
        # Screenshots repeat by nature: [desktop] max_actions bounds the computer tool instead.
        same = 0 if name == "computer" else self.store.count_identical_calls(
            ctx.work.task_id, name, tool_input)
        if same >= 2 * self.budgets.max_identical_calls:
            return (f"fail:budget: the same {name} call was repeated {same} times "
                    "(agent.max_identical_calls)")
        if same >= self.budgets.max_identical_calls:
            return (f"refused: this exact {name} call was already made {same} times "
                    "(agent.max_identical_calls); change approach or finish")
        return ""
