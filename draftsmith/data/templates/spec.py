"""Declarative chat templates: how one renders a conversation, and where its replies are.

`ChatTemplate` is a registry entry's description of a chat format (how each role's turn
opens and closes, the reply's end-of-turn marker, thinking and tool-call style, an opt-in
default system prompt). `render` builds the text by plain string concatenation, so it is
fast and its reply spans are exact by construction; `parse` finds the reply spans of text
that is already rendered (pre-formatted rows) from the same markers. Both return
`Rendered`: the text and one supervised character span [start, end) per assistant reply.

A span covers what the model writes at serving time: the reply content, its reasoning
where the template renders it (`Think`), tool calls (`Tools`), and the end-of-turn marker;
never text the template adds (a default system prompt, a date header). The named entries
live in registry.py; the tokenizer's own jinja template (`hf`) in jinja.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal, Sequence

from draftsmith.errors import DraftsmithError

Span = tuple[int, int]


class TemplateError(DraftsmithError):
    """A conversation the template cannot render; the row is skipped with this reason."""


@dataclass(frozen=True)
class Rendered:
    """Rendered text and one supervised character span [start, end) per assistant reply, in order."""

    text: str
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class Think:
    """How a template renders `reasoning_content`.

    The block is `open + reasoning + close` before the reply content. `scope` says which
    replies keep their reasoning: "all", "after_last_user" (replies after the last user
    query, as Qwen3 and DeepSeek-R1 serve it: history reasoning is dropped) or
    "last_message" (only a reply that ends the conversation, as gpt-oss). `empty` is the
    block the template writes for an in-scope reply without reasoning; it is not
    supervised, because the serving-time prompt holds it when thinking is off.
    `open_in_prompt`: the serving-time generation prompt already ends with `open`
    (DeepSeek-R1-Distill), so the model never writes it and it is not supervised.
    `strip`: characters stripped around the reasoning and before the content.
    """

    open: str
    close: str
    scope: Literal["all", "after_last_user", "last_message"]
    empty: str = ""
    empty_on_last_only: bool = True
    open_in_prompt: bool = False
    strip: str = ""


@dataclass(frozen=True)
class Tools:
    """How a template renders assistant tool calls and tool results.

    One call renders as `call.format(name=..., arguments=...)` (arguments as JSON, or
    verbatim when they are a string and `string_arguments_verbatim`); calls are joined
    by `call_separator` and preceded by `lead` when the reply has content. A run of
    consecutive tool results is wrapped in `result_group`, each result in `result`.
    `drops_content`: the template replaces the reply content by the call (Llama 3.1);
    `result_as_json`: tool results are written JSON-encoded (Llama 3.1 `| tojson`).
    """

    call: str
    result: tuple[str, str]
    result_group: tuple[str, str] = ("", "")
    call_separator: str = "\n"
    lead: str = "\n"
    string_arguments_verbatim: bool = False
    single_call: bool = False
    drops_content: bool = False
    result_as_json: bool = False


@dataclass(frozen=True)
class ChatTemplate:
    """A declarative chat template.

    Each turn is `opens + content + closes` followed by `separator`. For the assistant,
    `assistant[1]` is the end-of-turn marker the model emits (supervised); `separator` is
    template glue after it (not supervised). `system_style`: "turn" (its own turn),
    "bare" (raw text right after bos, DeepSeek), "first_user" (prefix of the first user
    message + "\\n\\n", Gemma), "last_user" (prefix of a user message that ends the
    conversation, as Mistral's template does: a row ending in a reply renders no system).
    `reply_opens` is the text right before a reply in pre-formatted text when it is not
    the assistant header (Mistral's "[/INST]").
    """

    name: str
    description: str
    user: tuple[str, str]
    assistant: tuple[str, str]
    system: tuple[str, str] | None = None
    system_style: Literal["turn", "bare", "first_user", "last_user"] = "turn"
    separator: str = ""
    bos: str = ""
    preamble: str = ""
    system_always: bool = False
    default_system: str | None = None
    trim: bool = False
    think: Think | None = None
    tools: Tools | None = None
    content_prefix: str = ""
    last_end_of_turn: str | None = None
    end_of_text: str = ""
    reply_opens: str | None = None
    real_template: str | None = None

    @property
    def end_of_turn(self) -> str:
        return self.assistant[1]

    def fingerprint(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    # ---------------------------------------------------------------- conversations
    def render(self, messages: Sequence[dict], system_prompt: str | None = None,
               use_default_system: bool = False, tools: list | None = None) -> Rendered:
        """Render canonical messages; `system_prompt` (or the default, if opted in) fills a missing system."""
        if tools:
            raise TemplateError(f"template {self.name!r} does not render tool schemas; use --chat-template hf")
        messages = list(messages)
        systems = [m["content"] for m in messages if m["role"] == "system"]
        body = [m for m in messages if m["role"] != "system"]
        if not systems:
            fill = system_prompt if system_prompt is not None else (self.default_system if use_default_system else None)
            if fill is not None:
                systems = [fill]
        user_ids = [i for i, m in enumerate(body) if m["role"] == "user"]
        first_user, last_user = (user_ids[0], user_ids[-1]) if user_ids else (-1, -1)
        parts: list[str] = [self.bos, self.preamble]
        spans: list[Span] = []
        pos = len(self.bos) + len(self.preamble)

        def emit(text: str) -> None:
            nonlocal pos
            parts.append(text)
            pos += len(text)

        system_text = None
        if systems:
            if self.system is None and self.system_style == "turn":
                raise TemplateError(f"template {self.name!r} has no system role")
            system_text = "\n\n".join(systems)
        if self.system_style == "turn" and self.system is not None and (system_text is not None or self.system_always):
            text = (system_text or "")
            emit(self.system[0] + (text.strip() if self.trim else text) + self.system[1] + self.separator)
        elif self.system_style == "bare" and system_text is not None:
            emit(system_text)

        for i, msg in enumerate(body):
            role = msg["role"]
            content = msg.get("content") or ""
            if role == "user":
                text = content.strip() if self.trim else content
                if system_text is not None and self.system_style == "first_user" and i == first_user:
                    text = system_text + "\n\n" + text
                if system_text is not None and self.system_style == "last_user" and i == len(body) - 1:
                    text = system_text + "\n\n" + text
                emit(self.user[0] + text + self.user[1] + self.separator)
            elif role == "tool":
                if self.tools is None:
                    raise TemplateError(f"template {self.name!r} does not render tool results; use --chat-template hf")
                first = i == 0 or body[i - 1]["role"] != "tool"
                last = i == len(body) - 1 or body[i + 1]["role"] != "tool"
                group_open, group_close = self.tools.result_group
                result = json.dumps(content, ensure_ascii=False) if self.tools.result_as_json else content
                emit((group_open if first else "") + self.tools.result[0] + result + self.tools.result[1]
                     + ((group_close + self.separator) if last else ""))
            elif role == "assistant":
                emit(self.assistant[0])
                header_tail, supervised = self._reply(msg, i, last_user, is_last=i == len(body) - 1)
                emit(header_tail)
                start = pos
                emit(supervised)
                spans.append((start, pos))
                emit(self.separator)
            else:
                raise TemplateError(f"unknown role {role!r}")
        emit(self.end_of_text)
        return Rendered("".join(parts), tuple(spans))

    def _reply(self, msg: dict, index: int, last_user: int, is_last: bool) -> tuple[str, str]:
        """(unsupervised text after the header, supervised reply text incl. end-of-turn)."""
        content = msg.get("content") or ""
        calls = msg.get("tool_calls") or []
        reasoning = msg.get("reasoning_content")
        think = self.think
        header_tail = ""
        body = ""
        if think is not None:
            if reasoning is None and think.close.strip() in content:
                before, _, after = content.partition(think.close.strip())
                reasoning = before.split(think.open.strip())[-1]
                content = after
            in_scope = (think.scope == "all"
                        or (think.scope == "after_last_user" and index > last_user)
                        or (think.scope == "last_message" and is_last))
            if in_scope and reasoning:
                r = reasoning.strip(think.strip) if think.strip else reasoning
                if think.open_in_prompt:
                    header_tail = think.open
                    body = r + think.close
                else:
                    body = think.open + r + think.close
                content = content.lstrip(think.strip) if think.strip else content
            elif in_scope and think.empty and (is_last or not think.empty_on_last_only):
                header_tail = think.empty
                content = content.lstrip(think.strip) if think.strip else content
        if self.trim:
            content = content.strip()
        if calls:
            if self.tools is None:
                raise TemplateError(f"template {self.name!r} does not render tool calls; use --chat-template hf")
            if self.tools.single_call and len(calls) != 1:
                raise TemplateError(f"template {self.name!r} renders one tool call per message")
            rendered = self.tools.call_separator.join(self._call(c) for c in calls)
            if self.tools.drops_content:
                content = rendered
            else:
                content = content + (self.tools.lead if content else "") + rendered
        end = self.last_end_of_turn if (self.last_end_of_turn and is_last) else self.end_of_turn
        return header_tail, body + self.content_prefix + content + end

    def _call(self, call: dict) -> str:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or "name" not in fn:
            raise TemplateError("tool call without a function name")
        args = fn.get("arguments", {})
        if not (isinstance(args, str) and self.tools.string_arguments_verbatim):
            args = json.dumps(args, ensure_ascii=False)
        return self.tools.call.format(name=fn["name"], arguments=args)

    # ---------------------------------------------------------------- pre-formatted text
    def assistant_opens(self) -> str:
        return self.reply_opens or self.assistant[0]

    def parse(self, text: str) -> Rendered:
        """Reply spans of already-rendered text, from this template's markers.

        A reply starts after each assistant header (and after an empty think block or a
        prompt-side think opener right behind it) and ends after the next end-of-turn
        marker, or at the next header / end of text when the reply is unterminated.
        """
        opens = self.assistant_opens()
        ends = [m for m in (self.end_of_turn, self.last_end_of_turn) if m]
        if not opens or opens not in text:
            raise TemplateError(f"no {self.name} assistant turn in text" + _foreign_markers(text, self))
        spans = []
        pos = text.find(opens)
        while pos != -1:
            start = pos + len(opens)
            if self.think is not None:
                for skip in (self.think.empty, self.think.open if self.think.open_in_prompt else ""):
                    if skip and text.startswith(skip, start):
                        start += len(skip)
                        break
            nxt = text.find(opens, start)
            limit = len(text) if nxt == -1 else nxt
            found = [text.find(m, start, limit) for m in ends]
            found = [(f, m) for f, m in zip(found, ends) if f != -1]
            end = min(f + len(m) for f, m in found) if found else limit
            if end > start:
                spans.append((start, end))
            pos = nxt
        return Rendered(text, tuple(spans))


def _foreign_markers(text: str, template: "ChatTemplate") -> str:
    """Names of registry templates whose assistant marker the text holds (for the error message)."""
    from draftsmith.data.templates.registry import REGISTRY  # the registry is built from this module

    others = [t.name for t in REGISTRY.values()
              if t.name != template.name and len(t.assistant_opens()) > 2 and t.assistant_opens() in text]
    return f" (its markers are those of {', '.join(others)})" if others else ""
