"""Canonical conversation rows: validation (`check_row`) and normalization (`normalize_row`).

The canonical rows (DESIGN.md) are
    {"id": str, "conversations": [{"role", "content", "reasoning_content"?, "tool_calls"?}, ...]}
    {"id": str, "text": str}                                   (pre-formatted)
with roles system / user / assistant / tool.

`check_row` validates a row that claims to be canonical, as it stands (validate-data,
build-dataset): a conversation needs an assistant reply after its first user message. `normalize_row` turns a row of any supported shape into a canonical
one (prepare-data). Both report the first problem as a short stable reason string
("missing id", "unknown role 'foo'", "empty content", "no assistant reply", ...): the
reasons are the problem kinds that the skipped file, validate-data and build-dataset
count, so they never embed positions; `Problem.field` says where the problem is.

Normalization policy (what prepare-data writes, counted in its summary):
- Shapes: messages under "conversations" or "messages", each {"role","content"} or
  ShareGPT's {"from","value"}. Role aliases: human/user -> user;
  gpt/chatgpt/bing/bard/assistant -> assistant; system -> system; tool -> tool
  (case-insensitive). Any other role skips the row ("unknown role 'x'").
- A message with missing, non-string or blank content skips the row; an assistant
  message with `tool_calls` may have no content (it is written as "").
- System: the first message may be a system message and is kept; any other system
  message is dropped ("dropped_system").
- Leading replies: assistant or tool messages before the first user message are
  dropped ("dropped_leading"; `drop_leading_replies`, the same rule in every stage:
  build-dataset drops them before any template renders the row, validate-data warns). They answer a prompt the row does not contain (ShareGPT
  splits long chats so that a part starts with "gpt"); training the draft on them
  teaches replies to nothing, and strict chat templates (Gemma, Mistral, Llama-2)
  refuse a conversation that does not start with a user turn.
- Consecutive messages of the same role (user/user, assistant/assistant) are merged
  into one, contents joined by a blank line ("merged"). Nothing is lost, and the
  result alternates as every chat template expects. Tool messages, and assistant
  messages that carry tool calls, are never merged.
- Trailing user/tool messages after the last assistant reply are dropped
  ("dropped_trailing"): no reply follows them, so they carry nothing to learn.
- A row without an assistant reply, without a user message, or whose only replies
  come before its first user message, is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}
OPTIONAL_MESSAGE_FIELDS = ("reasoning_content", "tool_calls", "tool_call_id", "name")
MERGE_SEPARATOR = "\n\n"
FIX_KINDS = ("merged", "dropped_system", "dropped_leading", "dropped_trailing")
NO_REPLY_AFTER_USER = "no assistant reply after a user message"


@dataclass(frozen=True)
class Problem:
    """Why a row cannot be used: a stable `reason` (the problem kind) and where (`field`)."""

    reason: str
    field: str | None = None


@dataclass
class Normalized:
    """Result of `normalize_row`: the canonical row, or the problem that prevents one."""

    kind: str
    row: dict | None
    problem: Problem | None
    fixes: dict[str, int] = field(default_factory=dict)


def row_kind(obj: object) -> str:
    """The row's kind: "preformatted" when it has "text" and no messages, else "conversation"."""
    if isinstance(obj, dict) and "text" in obj and "conversations" not in obj and "messages" not in obj:
        return "preformatted"
    return "conversation"


def check_row(obj: object) -> tuple[str, str | None]:
    """Validate a canonical row: ("conversation" | "preformatted", problem reason or None)."""
    kind, problem = find_problem(obj)
    return kind, problem.reason if problem else None


def find_problem(obj: object) -> tuple[str, Problem | None]:
    """Like `check_row`, with the field that holds the problem (e.g. "conversations[2].content")."""
    kind = row_kind(obj)
    if not isinstance(obj, dict):
        return kind, Problem("row is not an object")
    problem = _check_id(obj)
    if problem:
        return kind, problem
    if kind == "preformatted":
        return kind, _check_text(obj.get("text"))
    if "conversations" not in obj:
        return kind, Problem("no messages", "conversations")
    messages = obj["conversations"]
    if not isinstance(messages, list):
        return kind, Problem("conversations is not a list", "conversations")
    if not messages:
        return kind, Problem("no messages", "conversations")
    for i, msg in enumerate(messages):
        where = f"conversations[{i}]"
        if not isinstance(msg, dict):
            return kind, Problem("message is not an object", where)
        if "role" not in msg:
            return kind, Problem("missing role", f"{where}.role")
        role = msg["role"]
        if role not in ROLES:
            return kind, _role_problem(role, f"{where}.role")
        problem = _check_message_body(msg, role, where, "content")
        if problem:
            return kind, problem
    return kind, _check_turns([m["role"] for m in messages], "conversations")


def normalize_row(obj: object) -> Normalized:
    """Turn a row of a supported shape into a canonical row, applying the module's policy."""
    kind = row_kind(obj)
    if not isinstance(obj, dict):
        return Normalized(kind, None, Problem("row is not an object"))
    problem = _check_id(obj)
    if problem:
        return Normalized(kind, None, problem)
    if kind == "preformatted":
        problem = _check_text(obj["text"])
        return Normalized(kind, None if problem else {"id": obj["id"], "text": obj["text"]}, problem)

    key = "conversations" if "conversations" in obj else "messages"
    raw = obj.get(key)
    if raw is None:
        return Normalized(kind, None, Problem("no messages", key))
    if not isinstance(raw, list):
        return Normalized(kind, None, Problem(f"{key} is not a list", key))
    if not raw:
        return Normalized(kind, None, Problem("no messages", key))
    messages = []
    for i, msg in enumerate(raw):
        message = _plain_message(msg)
        if message is None:
            message, problem = _canonical_message(msg, f"{key}[{i}]")
            if problem:
                return Normalized(kind, None, problem)
        messages.append(message)
    problem = _check_turns([m["role"] for m in messages], key)
    if problem is not None and problem.reason != NO_REPLY_AFTER_USER:
        return Normalized(kind, None, problem)

    messages, fixes = _apply_policy(messages)
    if not messages:
        return Normalized(kind, None, Problem(NO_REPLY_AFTER_USER, key), fixes)
    row = {"id": obj["id"], "conversations": messages}
    if isinstance(obj.get("tools"), list):
        row["tools"] = obj["tools"]
    return Normalized(kind, row, None, fixes)


def drop_leading_replies(messages: list[dict]) -> tuple[list[dict], int]:
    """The messages without the assistant and tool messages before the first user message,
    and how many were dropped: the leading-reply policy, applied alike by prepare-data
    (`normalize_row`), validate-data (counted as a warning), build-dataset (every template,
    `hf` included, before rendering) and regenerate-data. A chat template never sees such a
    reply, so it cannot inject a default system prompt in front of it that would end up
    inside the reply's supervised span."""
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    kept = [m for i, m in enumerate(messages) if i >= first_user or m["role"] not in ("assistant", "tool")]
    return kept, len(messages) - len(kept)


def _check_turns(roles: list[str], key: str) -> Problem | None:
    """A reply to learn from: an assistant message, a user message, and a reply after the first user."""
    if "assistant" not in roles:
        return Problem("no assistant reply", key)
    if "user" not in roles:
        return Problem("no user message", key)
    if "assistant" not in roles[roles.index("user"):]:
        return Problem(NO_REPLY_AFTER_USER, key)
    return None


def _role_problem(role: object, where: str) -> Problem:
    """"unknown role 'x'" for a string (cut to 32 characters: a reason is a counted kind), else "role is not a string"."""
    if not isinstance(role, str):
        return Problem("role is not a string", where)
    return Problem(f"unknown role {role[:32]!r}", where)


def _blank(text: str) -> bool:
    return not text or text.isspace()  # no copy of a long string, unlike strip()


def _check_id(obj: dict) -> Problem | None:
    if "id" not in obj or obj["id"] is None:
        return Problem("missing id", "id")
    if not isinstance(obj["id"], str):
        return Problem("id is not a string", "id")
    if _blank(obj["id"]):
        return Problem("empty id", "id")
    return None


def _check_text(text: object) -> Problem | None:
    if not isinstance(text, str):
        return Problem("text is not a string", "text")
    if _blank(text):
        return Problem("empty text", "text")
    return None


def _check_message_body(msg: dict, role: str, where: str, content_key: str) -> Problem | None:
    tool_calls = msg.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        return Problem("tool_calls is not a list", f"{where}.tool_calls")
    reasoning = msg.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        return Problem("reasoning_content is not a string", f"{where}.reasoning_content")
    content = msg.get(content_key)
    calls_only = role == "assistant" and bool(tool_calls)
    if content is None:
        return None if calls_only else Problem("missing content", f"{where}.{content_key}")
    if not isinstance(content, str):
        return Problem("content is not a string", f"{where}.{content_key}")
    if _blank(content) and not calls_only:
        return Problem("empty content", f"{where}.{content_key}")
    return None


def _plain_message(msg: object) -> dict | None:
    """Fast path for the common message: just a known role and non-blank text (same result
    as `_canonical_message`); None sends anything else through the full check."""
    if type(msg) is not dict or len(msg) != 2:
        return None
    role = msg.get("role", msg.get("from"))
    content = msg.get("content", msg.get("value"))
    if type(role) is not str or type(content) is not str or not content or content.isspace():
        return None
    role = ROLE_ALIASES.get(role)
    return None if role is None else {"role": role, "content": content}


def _canonical_message(msg: object, where: str) -> tuple[dict | None, Problem | None]:
    if not isinstance(msg, dict):
        return None, Problem("message is not an object", where)
    role_key = "role" if "role" in msg else "from"
    if role_key not in msg:
        return None, Problem("missing role", f"{where}.role")
    raw_role = msg[role_key]
    role = ROLE_ALIASES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None and isinstance(raw_role, str):
        role = ROLE_ALIASES.get(raw_role.strip().lower())
    if role is None:
        return None, _role_problem(raw_role, f"{where}.{role_key}")
    content_key = "content" if "content" in msg else "value"
    problem = _check_message_body(msg, role, where, content_key)
    if problem:
        return None, problem
    message = {"role": role, "content": msg.get(content_key) or ""}
    if len(msg) > 2:
        for name in OPTIONAL_MESSAGE_FIELDS:
            if msg.get(name) is not None:
                message[name] = msg[name]
    return message, None


def _mergeable(prev: dict, msg: dict) -> bool:
    return (prev["role"] == msg["role"] and msg["role"] in ("user", "assistant")
            and not prev.get("tool_calls") and not msg.get("tool_calls"))


def _merge(prev: dict, msg: dict) -> dict:
    merged = dict(prev)
    merged["content"] = prev["content"] + MERGE_SEPARATOR + msg["content"]
    if "reasoning_content" in msg:
        parts = [p for p in (prev.get("reasoning_content"), msg["reasoning_content"]) if p]
        merged["reasoning_content"] = MERGE_SEPARATOR.join(parts)
    return merged


def _apply_policy(messages: list[dict]) -> tuple[list[dict], dict[str, int]]:
    fixes = dict.fromkeys(FIX_KINDS, 0)
    out: list[dict] = []
    seen_user = False
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "system":
            if i == 0:
                out.append(msg)
            else:
                fixes["dropped_system"] += 1
            continue
        if not seen_user and role != "user":
            fixes["dropped_leading"] += 1
            continue
        seen_user = True
        if out and _mergeable(out[-1], msg):
            out[-1] = _merge(out[-1], msg)
            fixes["merged"] += 1
        else:
            out.append(msg)
    while out and out[-1]["role"] != "assistant":
        out.pop()
        fixes["dropped_trailing"] += 1
    return out, fixes
