"""What tokens cost, per model: a flat catalogue, in US dollars per million tokens.

From the Claude API's pricing page (https://docs.claude.com/en/docs/about-claude/pricing).
A model is matched by the longest prefix of its id, so dated ids and `-latest` aliases find
their family. A model this table does not know (a newer one, or a local endpoint's) is priced
as its family is, and at the Sonnet price when its name names none; `mailagent check` says so,
and `model.input_usd_per_mtok` and `model.output_usd_per_mtok` price it exactly.
Prompt caching: a 5-minute cache write costs 1.25 times the input price, a cache hit 0.1 times.
Server tools: a web search costs $10 per 1,000 searches on top of the tokens of its results, a web
fetch nothing beyond its tokens
(https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-search-tool,
https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-fetch-tool).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailagent.config import ModelSettings

CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
WEB_SEARCH_USD = 10.0 / 1000  # one web search


@dataclass(frozen=True)
class Price:
    input_usd_per_mtok: float
    output_usd_per_mtok: float


PRICES: dict[str, Price] = {
    "claude-fable-5": Price(10.0, 50.0),
    "claude-mythos-5": Price(10.0, 50.0),
    "claude-opus-5": Price(5.0, 25.0),
    "claude-opus-4-8": Price(5.0, 25.0),
    "claude-opus-4-7": Price(5.0, 25.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4": Price(15.0, 75.0),
    "claude-3-opus": Price(15.0, 75.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-sonnet": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "claude-3-haiku": Price(0.25, 1.25),
}
# Unknown models: the price of the family the id names (its newest members'), else Sonnet's.
FAMILY = {"opus": Price(5.0, 25.0), "sonnet": Price(3.0, 15.0), "haiku": Price(1.0, 5.0)}
UNKNOWN = Price(3.0, 15.0)


def price_for(model: str) -> tuple[Price, bool]:
    """The price of `model`, and whether the table knows it (False: an estimate)."""
    name = model.lower()
    known = [prefix for prefix in PRICES if name.startswith(prefix)]
    if known:
        return PRICES[max(known, key=len)], True
    return next((p for word, p in FAMILY.items() if word in name), UNKNOWN), False


def model_price(model: ModelSettings) -> Price:
    """The model's price: the config's where it gives one, else the table's."""
    table, _ = price_for(model.name)
    return Price(table.input_usd_per_mtok if model.input_usd_per_mtok is None
                 else model.input_usd_per_mtok,
                 table.output_usd_per_mtok if model.output_usd_per_mtok is None
                 else model.output_usd_per_mtok)


def price_line(model: ModelSettings) -> str:
    """The price in force and where it comes from, for `mailagent check`."""
    price, known = price_for(model.name)
    mine = model_price(model)
    where = ("from the config" if mine != price else "mailagent's table" if known else
             "estimated: the model is not in mailagent's table; set model.input_usd_per_mtok "
             "and model.output_usd_per_mtok")
    return (f"${mine.input_usd_per_mtok:g} in, ${mine.output_usd_per_mtok:g} out per million "
            f"tokens ({where})")
