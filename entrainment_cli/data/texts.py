"""The prompt text of each row of the user's own data: one field, chat messages, or a template
filled from the row; then, with an optional system prompt, the exact text the model reads
(through its chat template when it has one and chat is on).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

Messages = list[dict[str, str]]


def template_fields(template: str) -> list[str]:
    """The row fields a ``str.format`` template names, in order; positional or malformed
    placeholders are a UserError (a row has names, not positions)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UserError(
            f"--template is not a valid template ({e}); write fields as {{name}}"
        ) from None
    names = []
    for _, name, _, conversion in parsed:
        if name is None:
            continue
        if conversion not in (None, "r", "s", "a"):
            raise UserError(
                f"--template has an unknown conversion '!{conversion}' in '{{{name}}}'; use "
                f"!r, !s or !a, or none: {{{name}}}"
            )
        base = name.split(".")[0].split("[")[0]
        if not base or base.isdigit():
            raise UserError(
                f"--template has a positional placeholder '{{{name}}}'; name a field: {{question}}"
            )
        names.append(base)
    if not names:
        raise UserError("--template names no field; write the row's fields as {name}")
    return list(dict.fromkeys(names))


def described(value: Any) -> str:
    """A data value as an error names it: ``null``, or its type and its first characters."""
    return "null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"


def text_of(value: Any, where: str) -> str:
    """``value`` as prompt text: a non-empty string or a number. A null (or a CSV's empty
    cell, NaN), an empty string, a list or an object is a UserError: it would be probed as
    the text 'None', '' or '[1, 2]'."""
    blank = isinstance(value, float) and math.isnan(value)
    if blank or isinstance(value, bool) or not isinstance(value, str | int | float):
        shown = "null" if blank else described(value)
    elif not str(value).strip():
        shown = "an empty string"
    else:
        return str(value)
    raise UserError(f"{where} must be a non-empty string or a number, not {shown}; fix that row")


@dataclass(frozen=True)
class TextSource:
    """Where a row's text comes from: exactly one of a field, a messages field or a template."""

    text_field: str | None = None
    messages_field: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        given = [o for o, v in self.options().items() if v is not None]
        if len(given) != 1:
            raise UserError(
                "give exactly one of --text-field, --messages-field, --template"
                + (f" (got {', '.join(given)})" if given else "")
            )

    def options(self) -> dict[str, str | None]:
        return {
            "--text-field": self.text_field,
            "--messages-field": self.messages_field,
            "--template": self.template,
        }

    def fields(self) -> dict[str, str]:
        """Each row field this source reads, keyed by the option that names it."""
        if self.template is not None:
            return {f"--template {{{name}}}": name for name in template_fields(self.template)}
        option, name = next((o, v) for o, v in self.options().items() if v is not None)
        return {option: name}

    def content(self, row: dict[str, Any], where: str) -> str | Messages:
        """The row's text, or its chat messages (a list of role/content objects); every text
        read is checked by :func:`text_of`."""
        if self.template is not None:
            try:
                return _CheckedFormatter(where).format(self.template, **row)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                # a format spec, conversion or index the row's value does not take
                raise UserError(
                    f"{where}: --template cannot format this row ({type(e).__name__}: {e}); "
                    "drop the format spec, conversion or index, e.g. write {difficulty}"
                ) from None
        if self.text_field is not None:
            return text_of(row[self.text_field], f"{where}: --text-field '{self.text_field}'")
        field = f"{where}: --messages-field '{self.messages_field}'"
        messages = row[self.messages_field]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
        ):
            raise UserError(
                f"{field} must hold a non-empty list of " + '{"role": ..., "content": ...} objects'
            )
        return [
            {
                "role": text_of(m["role"], f"{field}, message {j} 'role'"),
                "content": text_of(m["content"], f"{field}, message {j} 'content'"),
            }
            for j, m in enumerate(messages)
        ]


class _CheckedFormatter(string.Formatter):
    """``str.format`` whose every placeholder's value (after any ``.attr`` or ``[key]``) must
    be text by :func:`text_of`."""

    def __init__(self, where: str):
        self.where = where

    def get_field(self, field_name, args, kwargs):
        value, key = super().get_field(field_name, args, kwargs)
        text_of(value, f"{self.where}: --template field '{field_name}'")
        return value, key


def chat_text(tokenizer, messages: Messages, add_generation_prompt: bool = True) -> str:
    """``messages`` through the tokenizer's chat template; a template that refuses a system
    turn (Gemma) gets it folded into the first user turn. A refusal is a UserError."""
    attempts = [messages]
    if messages[0]["role"] == "system" and len(messages) > 1:
        system, first, *rest = messages
        content = f"{system['content']}\n\n{first['content']}"
        attempts.append([{"role": first["role"], "content": content}, *rest])
    for attempt in attempts:
        try:
            return tokenizer.apply_chat_template(
                attempt, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:
            error = e
    raise UserError(
        f"the model's chat template rejected the prompt ({type(error).__name__}: {error}); "
        "use --no-chat for a plain-text prompt"
    )


def render(tokenizer, content: str | Messages, system: str | None, chat: bool) -> tuple[str, str]:
    """(exact text given to the tokenizer, 'chat' or 'plain'). Chat, when asked for and the
    model has a template: the system turn (if any), then the text as the user's turn or the
    messages, with a generation prompt unless the messages end with the assistant's turn.
    Plain: the system prompt and a blank line, then the text (messages as ``role: content``
    lines)."""
    messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    if chat and getattr(tokenizer, "chat_template", None):
        return chat_text(tokenizer, messages, messages[-1]["role"] != "assistant"), "chat"
    head = f"{system}\n\n" if system else ""
    if isinstance(content, str):
        return head + content, "plain"
    return head + "\n".join(f"{m['role']}: {m['content']}" for m in content), "plain"
