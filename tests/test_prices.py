"""What a task costs: prices follow the model, the config can set them, and check says which."""

from __future__ import annotations

import pytest

from mailagent.agent.prices import Price, model_price, price_for, price_line
from mailagent.config import ModelSettings


@pytest.mark.parametrize(("model", "price", "known"), [
    ("claude-sonnet-4-6", Price(3.0, 15.0), True),
    ("claude-opus-4-1-20250805", Price(15.0, 75.0), True),
    ("claude-opus-4-6", Price(5.0, 25.0), True),
    ("claude-haiku-4-5-20251001", Price(1.0, 5.0), True),
    ("claude-3-5-haiku-latest", Price(0.8, 4.0), True),
    ("claude-haiku-9", Price(1.0, 5.0), False),
    ("llama-local", Price(3.0, 15.0), False),
])
def test_the_price_follows_the_model(model: str, price: Price, known: bool) -> None:
    assert price_for(model) == (price, known)


def test_the_config_overrides_the_table_and_check_says_where_the_price_comes_from() -> None:
    haiku = ModelSettings(name="claude-haiku-4-5")
    assert model_price(haiku) == Price(1.0, 5.0)
    assert "mailagent's table" in price_line(haiku)
    local = ModelSettings(name="llama-local", input_usd_per_mtok=0, output_usd_per_mtok=0)
    assert model_price(local) == Price(0.0, 0.0)
    assert price_line(local).startswith("$0 in, $0 out") and "from the config" in \
        price_line(local)
    assert "estimated" in price_line(ModelSettings(name="llama-local"))
