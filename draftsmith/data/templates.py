"""Chat templates: conversation -> rendered text + the character spans the draft must learn.

Two kinds of template produce the same `Rendered` result:

- `ChatTemplate`: a small declarative registry entry (how each role's turn opens and
  closes, the reply's end-of-turn marker, thinking and tool-call style, an opt-in
  default system prompt). Rendering is plain string building, so it is fast and its
  spans are exact by construction. Every entry whose model has a real jinja template
  on hand is checked against it in tests/test_templates.py.
- `JinjaTemplate` (`--chat-template hf`): the tokenizer's own jinja `chat_template`,
  for any model. Reply spans are found generically: each reply starts where the
  conversation departs from the serving-time prompt (the messages before it rendered
  with the generation prompt) and ends after the first stop marker the model emits
  (end-of-turn / eos tokens). Templates with `{% generation %}` blocks give their spans
  directly.

A span covers what the model writes at serving time: the reply content, its reasoning
where the template renders it, tool calls, and the end-of-turn marker; never text the
template adds (a default system prompt, a date header): build-dataset drops replies
before the first user message (conversation.drop_leading_replies), the only place a
template injects such text in front of a reply, and `JinjaTemplate` refuses a row whose
reply text is not inside the span it found. See
docs/templates.md for the rules (reasoning, empty think blocks, tool results).
"""

from __future__ import annotations

import dataclasses
import json
import re
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
    others = [t.name for t in REGISTRY.values()
              if t.name != template.name and len(t.assistant_opens()) > 2 and t.assistant_opens() in text]
    return f" (its markers are those of {', '.join(others)})" if others else ""


# ---------------------------------------------------------------------------- registry
_CHATML_TOOLS = Tools(
    call='<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>',
    result=("\n<tool_response>\n", "\n</tool_response>"),
    result_group=("<|im_start|>user", "<|im_end|>"),
)

_LLAMA31_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

_GPT_OSS_SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                   "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: medium\n\n"
                   "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>")

_ENTRIES = [
    ChatTemplate(
        name="llama3", description="Llama 3.0 headers (<|start_header_id|>role<|end_header_id|>), no forced system",
        bos="<|begin_of_text|>", trim=True,
        system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
        user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        default_system="You are a helpful assistant.",
        real_template="tokenizer:llama3_1",
    ),
    ChatTemplate(
        name="llama3.1", description="Llama 3.1/3.3 headers: a system turn always, with the knowledge-date lines",
        bos="<|begin_of_text|>", trim=True, system_always=True,
        system=("<|start_header_id|>system<|end_header_id|>\n\n" + _LLAMA31_DATE, "<|eot_id|>"),
        user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        tools=Tools(call='{{"name": "{name}", "parameters": {arguments}}}',
                    result=("<|start_header_id|>ipython<|end_header_id|>\n\n", "<|eot_id|>"),
                    single_call=True, drops_content=True, result_as_json=True),
        real_template="jinja:meta-llama-Llama-3.1-8B-Instruct",
    ),
    ChatTemplate(
        name="llama4", description="Llama 4 headers (<|header_start|>role<|header_end|>, <|eot|>)",
        bos="<|begin_of_text|>", trim=True,
        system=("<|header_start|>system<|header_end|>\n\n", "<|eot|>"),
        user=("<|header_start|>user<|header_end|>\n\n", "<|eot|>"),
        assistant=("<|header_start|>assistant<|header_end|>\n\n", "<|eot|>"),
        default_system="You are a helpful assistant.",
    ),
    ChatTemplate(
        name="qwen", description="ChatML (Qwen2/2.5, SmolLM2): <|im_start|>role\\n ... <|im_end|>\\n",
        system=("<|im_start|>system\n", "<|im_end|>"),
        user=("<|im_start|>user\n", "<|im_end|>"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>"), separator="\n",
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        tools=_CHATML_TOOLS,
        real_template="jinja:Qwen-Qwen2.5-7B-Instruct",
    ),
    ChatTemplate(
        name="qwen3", description="Qwen3 ChatML with <think> reasoning (kept after the last user query)",
        system=("<|im_start|>system\n", "<|im_end|>"),
        user=("<|im_start|>user\n", "<|im_end|>"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>"), separator="\n",
        think=Think(open="<think>\n", close="\n</think>\n\n", scope="after_last_user",
                    empty="<think>\n\n</think>\n\n", strip="\n"),
        tools=dataclasses.replace(_CHATML_TOOLS, string_arguments_verbatim=True),
        real_template="tokenizer:qwen3",
    ),
    ChatTemplate(
        name="deepseek-v3", description="DeepSeek-V3: <｜User｜> / <｜Assistant｜> ... <｜end▁of▁sentence｜>",
        bos="<｜begin▁of▁sentence｜>", system_style="bare",
        user=("<｜User｜>", ""), assistant=("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
        real_template="tokenizer:deepseek_v3",
    ),
    ChatTemplate(
        name="deepseek-r1-distill",
        description="DeepSeek-R1-Distill (Qwen/Llama): DeepSeek turns, prompt ends with <think>\\n",
        bos="<｜begin▁of▁sentence｜>", system_style="bare",
        user=("<｜User｜>", ""), assistant=("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
        think=Think(open="<think>\n", close="\n</think>\n\n", scope="after_last_user", open_in_prompt=True,
                    strip="\n"),
        real_template="jinja:deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    ),
    ChatTemplate(
        name="phi3", description="Phi-3 / Phi-3.5: <|role|>\\n ... <|end|>\\n, <|endoftext|> at the end",
        system=("<|system|>\n", "<|end|>"), user=("<|user|>\n", "<|end|>"),
        assistant=("<|assistant|>\n", "<|end|>"), separator="\n", end_of_text="<|endoftext|>",
        default_system="You are a helpful assistant.",
        real_template="jinja:microsoft-Phi-3.5-mini-instruct",
    ),
    ChatTemplate(
        name="phi4", description="Phi-4: <|im_start|>role<|im_sep|> ... <|im_end|>",
        system=("<|im_start|>system<|im_sep|>", "<|im_end|>"), user=("<|im_start|>user<|im_sep|>", "<|im_end|>"),
        assistant=("<|im_start|>assistant<|im_sep|>", "<|im_end|>"),
        default_system="You are a helpful assistant.",
    ),
    ChatTemplate(
        name="phi4-mini", description="Phi-4-mini: <|role|> ... <|end|>",
        system=("<|system|>", "<|end|>"), user=("<|user|>", "<|end|>"), assistant=("<|assistant|>", "<|end|>"),
        default_system="You are a helpful assistant.",
    ),
    ChatTemplate(
        name="gemma", description="Gemma 2/3: <start_of_turn>user|model\\n ... <end_of_turn>\\n, system in first user turn",
        bos="<bos>", trim=True, system_style="first_user",
        user=("<start_of_turn>user\n", "<end_of_turn>"), assistant=("<start_of_turn>model\n", "<end_of_turn>"),
        separator="\n", real_template="tokenizer:gemma3",
    ),
    ChatTemplate(
        name="mistral", description="Mistral (Nemo / tekken): [INST] ... [/INST] reply</s>, system in last user turn",
        bos="<s>", system_style="last_user",
        user=("[INST]", "[/INST]"), assistant=("", "</s>"), reply_opens="[/INST]",
        real_template="jinja:mistralai-Mistral-Nemo-Instruct-2407",
    ),
    ChatTemplate(
        name="gpt-oss", description="gpt-oss harmony: analysis + final channels, <|return|> ends the last reply",
        preamble=_GPT_OSS_SYSTEM,
        system=("<|start|>developer<|message|># Instructions\n\n", "\n\n<|end|>"),
        user=("<|start|>user<|message|>", "<|end|>"), assistant=("<|start|>assistant", "<|end|>"),
        content_prefix="<|channel|>final<|message|>", last_end_of_turn="<|return|>",
        think=Think(open="<|channel|>analysis<|message|>", close="<|end|><|start|>assistant", scope="last_message"),
        real_template="jinja:openai-gpt-oss-120b",
    ),
]

REGISTRY: dict[str, ChatTemplate] = {t.name: t for t in _ENTRIES}
HF = "hf"


def template_names() -> list[str]:
    return [HF, *REGISTRY]


def get_template(name: str) -> ChatTemplate:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DraftsmithError(f"unknown chat template {name!r}; known: {', '.join(template_names())}") from None


# ---------------------------------------------------------------------------- hf (jinja)
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class JinjaTemplate:
    """The tokenizer's own jinja chat template, with reply spans found generically.

    Rendering uses the same sandboxed jinja environment as transformers'
    `apply_chat_template`, with the tokenizer's special tokens as variables.
    """

    name = HF

    def __init__(self, tokenizer, chat_template: str | None = None, stop_tokens: Sequence[str] = ()):
        from transformers.utils.chat_template_utils import _compile_jinja_template

        source = chat_template or getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):
            source = source.get("default")
        if not source:
            raise DraftsmithError("the tokenizer has no chat_template: name one with --chat-template "
                                  f"({', '.join(REGISTRY)})")
        self.source = source
        self._compiled = _compile_jinja_template(source)
        self._has_generation = bool(_GENERATION_TAG.search(source))
        self._markers: ChatTemplate | None = None
        self._variants = [{}] + ([{"enable_thinking": False}, {"enable_thinking": True}]
                                 if "enable_thinking" in source else [])
        self._variables = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        special = set(getattr(tokenizer, "all_special_tokens", []))
        special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                    if getattr(t, "special", False)}
        self._special = special
        stops = {s for s in stop_tokens if s}
        if tokenizer.eos_token:
            stops.add(tokenizer.eos_token)
        stops |= self._probe_end_of_turn()
        self.stop_markers = tuple(sorted(stops, key=len, reverse=True))
        self._stop_re = re.compile("|".join(re.escape(s) for s in self.stop_markers))

    def render_text(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                    tools: list | None = None, **switches) -> str:
        try:
            return self._compiled.render(messages=_aliased(messages), tools=tools or None, documents=None,
                                         add_generation_prompt=add_generation_prompt,
                                         **{**self._variables, **switches})
        except Exception as e:  # jinja raises TemplateError, UndefinedError, TypeError... from user templates
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None

    def _probe_end_of_turn(self) -> set[str]:
        """The special token that closes a reply, read off a rendered one-turn probe."""
        probe = "\ue000probe\ue001"
        try:
            text = self.render_text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
        except TemplateError:
            return set()
        at = text.find(probe)
        if at == -1:
            return set()
        tail = text[at + len(probe):]
        for token in sorted(self._special, key=len, reverse=True):
            if tail.startswith(token):
                return {token}
        return set()

    def render(self, messages: Sequence[dict], system_prompt: str | None = None,
               use_default_system: bool = False, tools: list | None = None) -> Rendered:
        """Render with the jinja template (its own default system prompt, if any, always applies)."""
        messages = list(messages)
        if system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        if self._has_generation:
            return self._render_generation_blocks(messages, tools)
        text = self.render_text(messages, tools=tools)
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        starts = [self._reply_start(messages[:i], text, tools) for i in replies]
        spans = []
        for k, (i, start) in enumerate(zip(replies, starts)):
            limit = starts[k + 1] if k + 1 < len(starts) else len(text)
            m = self._stop_re.search(text, start, limit) if self.stop_markers else None
            if m is not None:
                end = m.end()
            elif i + 1 < len(messages):
                end = _common_prefix(self.render_text(messages[: i + 1], tools=tools), text)
            else:
                end = len(text)
            if end <= start or (spans and start < spans[-1][1]):
                raise TemplateError("cannot find where an assistant reply ends in the rendered text")
            for call in messages[i].get("tool_calls") or []:
                fn = call.get("function", call) if isinstance(call, dict) else {}
                if str(fn.get("name", "")) not in text[start:end]:
                    raise TemplateError("chat template does not render tool calls")
            tail = (messages[i].get("content") or "").strip()[-16:]
            if tail and tail not in text[start:end]:  # the span would hold template text, not this reply
                raise TemplateError("cannot find an assistant reply's text inside its span in the rendered text")
            spans.append((start, end))
        return Rendered(text, tuple(spans))

    def _reply_start(self, before: list[dict], text: str, tools: list | None) -> int:
        """Where the reply after `before` starts: after the longest serving-time prompt that prefixes `text`.

        The prompt is `before` rendered with the generation prompt, with thinking on and
        off where the template has the switch (an empty think block that the thinking-off
        prompt holds is then not supervised); when no prompt is a whole prefix (the
        template rewrites history), the reply starts where text and prompt part.
        """
        prompts = [self.render_text(before, add_generation_prompt=True, tools=tools, **v) for v in self._variants]
        whole = [len(p) for p in prompts if text.startswith(p)]
        return max(whole) if whole else _common_prefix(prompts[0], text)

    def _render_generation_blocks(self, messages: list[dict], tools: list | None) -> Rendered:
        from transformers.utils.chat_template_utils import _render_with_assistant_indices

        try:
            text, indices = _render_with_assistant_indices(self._compiled, _aliased(messages), tools or None, None,
                                                            False, **self._variables)
        except Exception as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
        return Rendered(text, tuple((int(s), int(e)) for s, e in indices if e > s))

    def parse(self, text: str) -> Rendered:
        """Pre-formatted text with the tokenizer's template: markers read off a probe render."""
        if self._markers is None:
            self._markers = self.as_markers()
        return self._markers.parse(text)

    def as_markers(self) -> ChatTemplate:
        """A marker-only ChatTemplate (assistant header, end-of-turn) derived from this template."""
        user = [{"role": "user", "content": "hi"}]
        bare = self.render_text(user)
        prompt = self.render_text(user, add_generation_prompt=True)
        header = prompt[_common_prefix(bare, prompt):] if prompt.startswith(bare) else ""
        if not header:
            raise DraftsmithError("cannot derive the assistant header from the tokenizer's chat template; "
                                  "name a template with --chat-template")
        eot = next(iter(self._probe_end_of_turn()), None) or next(iter(self.stop_markers), "")
        extras = [p[len(prompt):] for p in (self.render_text(user, add_generation_prompt=True, **v)
                                            for v in self._variants[1:]) if p.startswith(prompt) and len(p) > len(prompt)]
        think = Think(open="", close="", scope="all", empty=extras[0]) if extras else None
        return ChatTemplate(name=HF, description="markers of the tokenizer's chat template",
                            user=("", ""), assistant=(header, eot), think=think)


def _aliased(messages: Sequence[dict]) -> list[dict]:
    """Messages as transformers passes them: None fields dropped, reasoning also as `thinking` (gpt-oss)."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        if "reasoning_content" in m and "thinking" not in m:
            m["thinking"] = m["reasoning_content"]
        out.append(m)
    return out


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
