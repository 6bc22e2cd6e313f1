"""Chat formatting: one place that turns a user text into the model's prompt string."""

from __future__ import annotations


def chat_messages(user_text: str, system: str | None = None) -> list[dict]:
    """OpenAI-style messages; `system=None` keeps the template's own default system prompt.

    >>> chat_messages("hi", system="Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
    """
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user_text}
    ]


def format_chat(tokenizer, user_text: str, system: str | None = None) -> str:
    """The prompt string the model should continue: the chat template with the assistant turn
    opened, or the raw text (plus system text, if any) when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            chat_messages(user_text, system), add_generation_prompt=True, tokenize=False
        )
    return user_text if system is None else f"{system}\n\n{user_text}"
