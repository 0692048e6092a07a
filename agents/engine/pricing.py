"""Token estimates and USD costs.

* :func:`cost_usd` prices each kind of token separately (see
  :class:`~agents.engine.runtime.Price`); :func:`estimate_usd` is the worst case
  reserved before a call: the input bound
  (:func:`agents.engine.tokens.input_token_bound`) at the dearer of the input
  and cached-input prices plus the output bound (``maxTokens``, reasoning
  included) at the dearer of the output and reasoning prices, so no split of
  the usage into cached or reasoning tokens can cost more. Both are ``Decimal``
  quantized to 1e-8 USD; the estimate rounds up so a reservation never falls
  short of its own formula.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from .providers.base import Usage
from .runtime import Price

QUANTUM = Decimal("0.00000001")
_PER_MILLION = Decimal(1_000_000)


def cost_usd(usage: Usage, price: Price | None) -> Decimal:
    """Actual cost of one call; 0 when the model has no price."""
    if price is None:
        return Decimal(0).quantize(QUANTUM)
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    reasoning_price = price.reasoning if price.reasoning is not None else price.output
    total = (
        (usage.input_tokens - cached) * price.input
        + cached * cached_price
        + (usage.output_tokens - reasoning) * price.output
        + reasoning * reasoning_price
    ) / _PER_MILLION
    return total.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def estimate_usd(input_tokens: int, max_tokens: int, price: Price | None) -> Decimal:
    """Worst-case cost of one call, reserved before it is made: every token at the dearest rate of its side."""
    if price is None:
        return Decimal(0).quantize(QUANTUM)
    input_rate = max(price.input, price.cached_input if price.cached_input is not None else price.input)
    output_rate = max(price.output, price.reasoning if price.reasoning is not None else price.output)
    total = (input_tokens * input_rate + max_tokens * output_rate) / _PER_MILLION
    return total.quantize(QUANTUM, rounding=ROUND_CEILING)
