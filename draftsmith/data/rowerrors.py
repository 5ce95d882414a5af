"""The one table of reasons a data stage skips a row, shared by every stage.

prepare-data, validate-data, regenerate-data and build-dataset (and hidden-states and
train, which read conversations through `build.load_tokenized`) never stop on a bad row:
the row is skipped with an entry {"source", "line"/"index", "id"?, "reason", "field"?,
"detail"?} (the skipped files) and counted per reason in the stage's summary. A `reason`
is one of the stable strings below (a few carry one value, written `<role>` / `<N>` here); the
position, the field and the specifics go into the other keys, never into the reason.
docs/custom-data.md lists this table; tests/test_fuzz_rows.py checks that the two agree
and that every reason a stage writes is in it.

Invalid Unicode policy (every stage, one place: the readers of formats.py): a row holding a
lone UTF-16 surrogate (a "\\ud800" escape), a NUL character, bytes that are not UTF-8,
or a byte-order mark anywhere but the start of the file is *rejected* with the reason
`invalid Unicode`, never repaired: a repair would change the text the draft learns from
without the user seeing it, and such rows are almost always damaged scrapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    """A skip reason: its stable text, the step that finds it, and what it means."""

    text: str
    step: str  # "read" (file decoding and limits), "row" (row shape), "template" (rendering, tokens), "stage"
    meaning: str

    @property
    def pattern(self) -> re.Pattern:
        """The reason as a regex: a `<placeholder>` matches any value."""
        return re.compile("^" + re.sub(r"<[A-Za-z]+>", ".+", re.escape(self.text)) + "$")


# ---------------------------------------------------------------- read: formats.py
INVALID_JSON = "invalid JSON"
TRUNCATED_JSON = "truncated JSON"
UNREADABLE = "unreadable data"
TOO_LARGE = "row too large"
TOO_DEEP = "nesting too deep"
INVALID_UNICODE = "invalid Unicode"
# ---------------------------------------------------------------- build-dataset / regenerate-data
TEMPLATE_FAILED = "chat template cannot render the row"
NO_REPLY = "no assistant reply in rendered text"
NO_SUPERVISED = "no supervised token within max_length"
TOKENIZER_FAILED = "tokenizer cannot encode the row"
PREFORMATTED_IN_CONVERSATIONS = "pre-formatted row without --is-preformatted"
CONVERSATION_IN_PREFORMATTED = "conversation row with --is-preformatted"
NO_TURNS = "pre-formatted text has no turns to answer"
TOOL_CALLS_NOT_REGENERATED = "tool calls are not regenerated"
# ---------------------------------------------------------------- the safety net
INTERNAL = "internal error"

TABLE: tuple[Reason, ...] = (
    Reason(INVALID_JSON, "read", "the line (or array element) is not JSON; `detail` says where the parser stopped"),
    Reason(TRUNCATED_JSON, "read", "the file ends inside this row (a cut download or .gz stream); every row before it is kept"),
    Reason(UNREADABLE, "read", "a parquet row group that cannot be decoded; the rows before it are kept"),
    Reason(TOO_LARGE, "read", "the row is longer than --max-row-bytes; it is skipped without being loaded"),
    Reason(TOO_DEEP, "read", "a value nested deeper than --max-row-depth; checked before the row is decoded"),
    Reason(INVALID_UNICODE, "read", "a lone surrogate, NUL character, non-UTF-8 bytes or a byte-order mark "
                                    "inside the file; `detail` names the field or byte (rejected, never repaired)"),
    Reason("row is not an object", "row", "the row is a JSON array, string or number"),
    Reason("missing id", "row", "no `id`, or `id` is null"),
    Reason("id is not a string", "row", "`id` is a number, list, ..."),
    Reason("empty id", "row", "`id` is blank"),
    Reason("no messages", "row", "no `conversations` (or `messages`), or an empty list"),
    Reason("conversations is not a list", "row", "`conversations` is not a list"),
    Reason("messages is not a list", "row", "`messages` is not a list"),
    Reason("message is not an object", "row", "a message is not a JSON object"),
    Reason("missing role", "row", "a message has no `role` (or `from`)"),
    Reason("role is not a string", "row", "a message's `role` is null, a number, a list, ..."),
    Reason("unknown role <role>", "row", "a role outside system/user/assistant/tool (and prepare-data's aliases), "
                                         "quoted, cut to 32 characters"),
    Reason("missing content", "row", "a message has no `content` (and is not an assistant tool call)"),
    Reason("content is not a string", "row", "`content` is a number, list, ..."),
    Reason("empty content", "row", "`content` is blank"),
    Reason("reasoning_content is not a string", "row", "`reasoning_content` is not a string"),
    Reason("tool_calls is not a list", "row", "`tool_calls` is not a list"),
    Reason("no assistant reply", "row", "the row has no assistant message"),
    Reason("no user message", "row", "the row has no user message"),
    Reason("no assistant reply after a user message", "row",
           "every reply comes before the first user message; such replies are dropped (see the policy)"),
    Reason("text is not a string", "row", "a pre-formatted row's `text` is not a string"),
    Reason("empty text", "row", "a pre-formatted row's `text` is blank"),
    Reason(PREFORMATTED_IN_CONVERSATIONS, "row", "build-dataset reads conversations in this run"),
    Reason(CONVERSATION_IN_PREFORMATTED, "row", "build-dataset reads pre-formatted rows in this run"),
    Reason(NO_TURNS, "row", "regenerate-data answers user turns; a pre-formatted row has none"),
    Reason(TOOL_CALLS_NOT_REGENERATED, "row", "regenerate-data cannot replay tool results"),
    Reason(TEMPLATE_FAILED, "template", "the chat template refuses the row (e.g. roles that do not alternate, "
                                        "tools a named template cannot render); `detail` has its message"),
    Reason(NO_REPLY, "template", "no assistant reply is left in the rendered text (e.g. --train-only-last-turn "
                                 "on a pre-formatted row without one)"),
    Reason(NO_SUPERVISED, "template", "truncation to --max-length cut every supervised token"),
    Reason(TOKENIZER_FAILED, "template", "the tokenizer raised on the rendered text; `detail` has its message"),
    Reason("prompt longer than --max-prompt-length <N> tokens", "stage", "regenerate-data: a turn's prompt is too long"),
    Reason("the target's reply is empty", "stage", "regenerate-data: the target answered the first turn with nothing"),
    Reason("no reply", "stage", "regenerate-data: no turn was answered"),
    Reason(INTERNAL, "stage", "a bug in draftsmith met this row; the stage went on without it "
                              "(`detail` has the exception: please report it)"),
)

_BY_TEXT = {r.text: r for r in TABLE}
_FAMILIES = [r for r in TABLE if "<" in r.text]


def lookup(reason: str) -> Reason | None:
    """The table entry a reason string belongs to (None: not a known reason)."""
    found = _BY_TEXT.get(reason)
    if found is not None:
        return found
    return next((r for r in _FAMILIES if r.pattern.match(reason)), None)


def describe(entry: dict) -> str:
    """One line for a skipped-file entry: `file, line 3, id 'x': reason (field; detail)` (--strict, logs)."""
    where = [str(entry.get("source", "?"))]
    if entry.get("line") is not None:
        where.append(f"line {entry['line']}")
    if entry.get("index") is not None:
        where.append(f"index {entry['index']}")
    if entry.get("id") is not None:
        where.append(f"id {entry['id']!r}")
    extra = "; ".join(str(entry[k]) for k in ("field", "detail") if entry.get(k))
    return f"{', '.join(where)}: {entry['reason']}" + (f" ({extra})" if extra else "")


def internal_error(exc: BaseException) -> dict:
    """The `reason`/`detail` of a row that raised where no error was expected (the safety net)."""
    return {"reason": INTERNAL, "detail": f"{type(exc).__name__}: {exc}"[:500]}
