"""Model providers: ``openai`` (OpenAI-compatible HTTP) and ``fruxon-local`` (offline)."""

from .base import ChatRequest, ChatResponse, Provider, ToolCall, Usage
from .local import LocalProvider
from .openai import OpenAIProvider

__all__ = ["ChatRequest", "ChatResponse", "LocalProvider", "OpenAIProvider", "Provider", "ToolCall", "Usage"]
