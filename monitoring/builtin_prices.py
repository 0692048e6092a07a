"""The built-in price table: list prices in USD per million tokens, December 2026.

Rows are (provider, model, input, cached input, output, reasoning). ``provider``
is the spec's wire format: ``openai`` covers every OpenAI-compatible endpoint
(OpenAI, Azure, Anthropic's and Google's compatible endpoints, vLLM, ...), so
models are keyed by their name. Reasoning tokens are billed at the output price
unless a row says otherwise (None). ``*`` matches any model of the provider.
Orgs and agents override rows through ``/prices``; this table is re-seeded by
migration, never edited in place.
"""
BUILTIN_PRICES = [
    ("openai", "gpt-5", "1.25", "0.125", "10.00", None),
    ("openai", "gpt-5-mini", "0.25", "0.025", "2.00", None),
    ("openai", "gpt-5-nano", "0.05", "0.005", "0.40", None),
    ("openai", "gpt-4.1", "2.00", "0.50", "8.00", None),
    ("openai", "gpt-4.1-mini", "0.40", "0.10", "1.60", None),
    ("openai", "gpt-4.1-nano", "0.10", "0.025", "0.40", None),
    ("openai", "gpt-4o", "2.50", "1.25", "10.00", None),
    ("openai", "gpt-4o-mini", "0.15", "0.075", "0.60", None),
    ("openai", "o3", "2.00", "0.50", "8.00", None),
    ("openai", "o4-mini", "1.10", "0.275", "4.40", None),
    ("openai", "claude-opus-4-1", "15.00", "1.50", "75.00", None),
    ("openai", "claude-sonnet-4-5", "3.00", "0.30", "15.00", None),
    ("openai", "claude-haiku-4-5", "1.00", "0.10", "5.00", None),
    ("openai", "gemini-2.5-pro", "1.25", "0.31", "10.00", None),
    ("openai", "gemini-2.5-flash", "0.30", "0.075", "2.50", None),
    # The offline provider: a nominal price so demos and tests see real cost arithmetic.
    ("fruxon-local", "*", "1.00", "0.50", "2.00", None),
]
