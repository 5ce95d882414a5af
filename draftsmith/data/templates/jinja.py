"""`--chat-template hf`: the tokenizer's own jinja chat template, for any model.

`JinjaTemplate` renders with the tokenizer's `chat_template` and finds the reply spans
generically: each reply starts where the conversation departs from the serving-time prompt
(the messages before it rendered with the generation prompt, with thinking on and off where
the template has the switch) and ends after the first stop marker the model emits
(end-of-turn / eos tokens). Templates with `{% generation %}` blocks give their spans
directly. A row whose reply text is not inside the span found is refused (TemplateError),
so template text is never supervised.

`render_chat_template` is the one place draftsmith calls into transformers for chat
templates: `render_jinja_template` (transformers.utils.chat_template_utils; public, the
function `apply_chat_template` itself calls), which gives the sandboxed rendering and the
`{% generation %}` spans as character offsets. (Rendering transformers' compiled template
directly, the private `_compile_jinja_template`, is 6-18% faster per render but leaves
build-dataset's time unchanged within noise: bench/chat_template_render.py, docs/benchmarks.md;
so no private function is used.)
tests/test_templates.py checks its text against `tokenizer.apply_chat_template`, its spans on a
`{% generation %}` template and its sandbox, so a change in transformers fails there, loudly.
"""

from __future__ import annotations

import re
from typing import Sequence

from draftsmith.data.templates.registry import HF, REGISTRY
from draftsmith.data.templates.spec import ChatTemplate, Rendered, TemplateError, Think
from draftsmith.errors import DraftsmithError


def render_chat_template(source: str, messages: Sequence[dict], *, add_generation_prompt: bool = False,
                         tools: list | None = None, generation_spans: bool = False,
                         **variables) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): jinja `source` rendered in transformers' sandbox with `messages` (None fields
    dropped, reasoning also passed as `thinking`, as transformers passes them), `tools` and
    `variables`; `spans` are the character ranges of `{% generation %}` blocks when
    `generation_spans` is set (else []). A template that fails on these messages is a
    TemplateError (the row is skipped); one that does not parse, a DraftsmithError (the stage stops)."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        texts, spans = render_jinja_template(conversations=[_aliased(messages)], tools=tools or None, documents=None,
                                             chat_template=source, return_assistant_tokens_mask=generation_spans,
                                             add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateSyntaxError as e:
        raise DraftsmithError(f"the chat template does not compile: line {e.lineno}: {e.message}") from None
    except Exception as e:  # jinja raises TemplateError, UndefinedError, SecurityError, TypeError... from templates
        raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    return texts[0], (list(spans[0]) if generation_spans else [])


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class JinjaTemplate:
    """The tokenizer's own jinja chat template, with reply spans found generically.

    Rendering goes through `render_chat_template` (transformers' sandboxed jinja environment, the
    one `apply_chat_template` uses), with the tokenizer's special tokens as variables.
    """

    name = HF

    def __init__(self, tokenizer, chat_template: str | None = None, stop_tokens: Sequence[str] = ()):
        source = chat_template or getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):
            source = source.get("default")
        if not source:
            raise DraftsmithError("the tokenizer has no chat_template: name one with --chat-template "
                                  f"({', '.join(REGISTRY)})")
        self.source = source
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
        stops |= self._probe_end_of_turn()   # the first render: a template that does not parse stops here
        self.stop_markers = tuple(sorted(stops, key=len, reverse=True))
        self._stop_re = re.compile("|".join(re.escape(s) for s in self.stop_markers))

    def render_text(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                    tools: list | None = None, **switches) -> str:
        return render_chat_template(self.source, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                    **{**self._variables, **switches})[0]

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
        text, indices = render_chat_template(self.source, messages, tools=tools, generation_spans=True,
                                             **self._variables)
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
