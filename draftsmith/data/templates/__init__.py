"""Chat templates: conversation -> rendered text + the character spans the draft must learn.

Two kinds of template produce the same `Rendered` result (text + one span per reply):

- spec.py, `ChatTemplate`: a declarative description of a chat format, rendered by plain
  string building (exact spans by construction) and parsed back for pre-formatted text.
- registry.py: the named entries (`--chat-template llama3`, `qwen3`, ...) and `get_template`;
  each entry whose model has a real jinja template on hand is checked against it in
  tests/test_templates.py.
- jinja.py, `JinjaTemplate` (`--chat-template hf`): the tokenizer's own jinja template, for
  any model, with reply spans found generically; the one call into transformers.

A span covers what the model writes at serving time: the reply content, its reasoning
where the template renders it, tool calls, and the end-of-turn marker; never text the
template adds (a default system prompt, a date header): build-dataset drops replies
before the first user message (conversation.drop_leading_replies), the only place a
template injects such text in front of a reply, and `JinjaTemplate` refuses a row whose
reply text is not inside the span it found. See docs/templates.md for the rules
(reasoning, empty think blocks, tool results).
"""

from draftsmith.data.templates.jinja import JinjaTemplate, render_chat_template
from draftsmith.data.templates.registry import HF, REGISTRY, get_template, template_names
from draftsmith.data.templates.spec import ChatTemplate, Rendered, Span, TemplateError, Think, Tools

__all__ = ["HF", "REGISTRY", "ChatTemplate", "JinjaTemplate", "Rendered", "Span", "TemplateError", "Think", "Tools",
           "get_template", "render_chat_template", "template_names"]
