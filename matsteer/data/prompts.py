"""Prompts as the model expects them (the chat template of instruct models)."""

from __future__ import annotations

from typing import Any


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (instruct models do; base models usually do not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: str, chat: bool = True) -> str:
    """The prompt as the model expects it: the chat template for instruct models (if asked and available)."""
    if chat and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt
