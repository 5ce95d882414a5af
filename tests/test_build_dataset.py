"""build-dataset: real ShareGPT rows, skips and report, truncation, batched == unbatched, cache keys, CLI."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from datasets import load_from_disk

from draftsmith import resources
from draftsmith.cli import run_command
from draftsmith.data.build import NO_SUPERVISED, BuildConfig, build_dataset, cache_key
from draftsmith.data.conversation import normalize_row
from draftsmith.data.formats import iter_records
from draftsmith.data.templates import get_template
from tests._build_helpers import SINGLE, SYSTEM_MULTI, real_tokenizer, tokenizer_path, write_jsonl

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def sharegpt_rows() -> list[dict]:
    """The first 120 packaged ShareGPT conversations, normalized to canonical rows."""
    rows = []
    for rec in itertools.islice(iter_records(resources.sharegpt_json()), 160):
        norm = normalize_row(rec.value)
        if norm.row is not None:
            rows.append(norm.row)
    return rows[:120]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Dataset caches go to tmp_path; tokenizer paths are resolved (memoized) from the real cache first."""
    tokenizer_path("smollm2"), tokenizer_path("qwen3"), tokenizer_path("llama3_1"), tokenizer_path("gemma3")
    real_tokenizer("smollm2")
    monkeypatch.setenv("DRAFTSMITH_CACHE", str(tmp_path / "cache"))


def _cfg(data, **kw) -> BuildConfig:
    return BuildConfig(data_path=str(data), target_model_path=str(tokenizer_path("smollm2")), **kw)


def test_sharegpt_with_smollm2(tmp_path, sharegpt_rows):
    data = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows)
    result = build_dataset(_cfg(data, max_length=1024))
    rep = result.report
    assert rep["rows_in"] == len(sharegpt_rows) == rep["rows_out"] + rep["skipped"]
    assert rep["skipped"] == sum(rep["skipped_by_reason"].values())
    ds = load_from_disk(str(result.path))
    assert ds.column_names == ["id", "input_ids", "loss_mask"] and len(ds) == rep["rows_out"]
    tok = real_tokenizer("smollm2")
    by_id = {r["id"]: r for r in sharegpt_rows}
    total = supervised = checked = 0
    for row in ds:
        ids, mask = np.array(row["input_ids"]), np.array(row["loss_mask"])
        assert len(ids) == len(mask) <= 1024 and set(mask.tolist()) <= {0, 1} and mask.any()
        total, supervised = total + len(ids), supervised + int(mask.sum())
        conv = by_id[row["id"]]["conversations"]
        full = tok.apply_chat_template(conv, tokenize=True, return_dict=False)
        assert ids.tolist() == list(full)[:1024]
        if len(full) <= 1024:
            replies = "".join(m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant")
            assert tok.decode(ids[mask.astype(bool)].tolist()) == replies
            checked += 1
    assert rep["tokens"] == total and rep["supervised_tokens"] == supervised
    assert checked > 30 and rep["truncated"] == len(ds) - checked


def test_skips_are_counted_with_positions(tmp_path):
    rows = [
        {"id": "ok", "conversations": SINGLE},
        "{not json",
        {"id": "pre", "text": "<|im_start|>user\nhi<|im_end|>\n"},
        {"id": "noreply", "conversations": [{"role": "user", "content": "hi"}]},
        {"id": "long", "conversations": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]},
    ]
    result = build_dataset(_cfg(write_jsonl(tmp_path / "d.jsonl", rows), max_length=64, chat_template="qwen"))
    assert result.report["rows_in"] == 5 and result.report["rows_out"] == 1
    assert result.report["skipped_by_reason"] == {
        "invalid JSON": 1, "pre-formatted row without --is-preformatted": 1, "no assistant reply": 1,
        NO_SUPERVISED: 1}
    skipped = [json.loads(x) for x in (result.path / "skipped.jsonl").read_text().splitlines()]
    assert [(s.get("id"), s["line"]) for s in skipped] == [(None, 2), ("pre", 3), ("noreply", 4), ("long", 5)]
    assert result.report["truncated"] == 0  # the cut row was skipped, not written


def test_strict_stops_at_the_first_row_that_would_be_skipped(tmp_path, capsys):
    """--strict: the first skipped row in input order ends the run (exit 2, nothing written), whether the
    reader or the tokenizing worker finds it, and a cached build with skipped rows fails the same way."""
    from draftsmith.errors import StrictRowError

    long = {"id": "long", "conversations": [{"role": "user", "content": "word " * 400},
                                            {"role": "assistant", "content": "ok"}]}
    cases = [([{"id": "ok", "conversations": SINGLE}, long, "{not json"], f"line 2, id 'long': {NO_SUPERVISED}"),
             ([{"id": "ok", "conversations": SINGLE}, "{not json", long], "line 2: invalid JSON"),
             ([{"id": "ok", "conversations": SINGLE}, {"id": "ok2", "conversations": SINGLE}, "{not json"],
              "line 3: invalid JSON")]
    for i, (rows, first) in enumerate(cases):
        data, out = write_jsonl(tmp_path / f"d{i}.jsonl", rows), tmp_path / f"out{i}"
        with pytest.raises(StrictRowError, match=re.escape(first)):
            build_dataset(_cfg(data, max_length=64, chat_template="qwen", output_dir=str(out), strict=True))
        assert not out.exists()
    argv = ["--data-path", str(data), "--target-model-path", str(tokenizer_path("smollm2")), "--max-length", "64",
            "--output-dir", str(out)]
    assert run_command("build-dataset", argv) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 1
    assert run_command("build-dataset", argv + ["--strict"]) == 2            # the cached build skipped a row
    assert "--strict: " in capsys.readouterr().err


def test_preformatted_rows(tmp_path):
    qwen = get_template("qwen")
    good = qwen.render(SYSTEM_MULTI).text
    foreign = get_template("llama3").render(SINGLE).text
    rows = [{"id": "good", "text": good}, {"id": "foreign", "text": foreign},
            {"id": "conv", "conversations": SINGLE}]
    result = build_dataset(_cfg(write_jsonl(tmp_path / "p.jsonl", rows), chat_template="qwen", is_preformatted=True))
    assert result.report["rows_out"] == 1
    reasons = result.report["skipped_by_reason"]
    assert reasons == {"conversation row with --is-preformatted": 1, "chat template cannot render the row": 1}
    skipped = [json.loads(x) for x in (result.path / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["id"] == "foreign"
    assert skipped[0]["detail"] == "no qwen assistant turn in text (its markers are those of llama3, llama3.1)"
    row = load_from_disk(str(result.path))[0]
    tok = real_tokenizer("smollm2")
    masked = [i for i, m in zip(row["input_ids"], row["loss_mask"]) if m]
    assert tok.decode(masked) == "Hello!<|im_end|>Blue.\n<|im_end|>"
    # the same rows as conversations give the same tokens and mask
    conv = build_dataset(_cfg(write_jsonl(tmp_path / "c.jsonl", [{"id": "good", "conversations": SYSTEM_MULTI}]),
                              chat_template="qwen"))
    assert load_from_disk(str(conv.path))[0] == row


def test_train_only_last_turn(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "conversations": SYSTEM_MULTI}])
    result = build_dataset(_cfg(data, train_only_last_turn=True))
    row = load_from_disk(str(result.path))[0]
    masked = [i for i, m in zip(row["input_ids"], row["loss_mask"]) if m]
    assert real_tokenizer("smollm2").decode(masked) == "Blue.\n<|im_end|>"


def test_batched_equals_unbatched(tmp_path, sharegpt_rows):
    data = write_jsonl(tmp_path / "sg.jsonl", sharegpt_rows[:60])
    one = build_dataset(_cfg(data, num_proc=1, output_dir=str(tmp_path / "one")))
    two = build_dataset(_cfg(data, num_proc=2, output_dir=str(tmp_path / "two")))
    assert one.key == two.key and one.report["rows_out"] == two.report["rows_out"]
    a, b = load_from_disk(str(one.path)), load_from_disk(str(two.path))
    assert a.to_dict() == b.to_dict()


def test_cache_reuse_and_invalidation(tmp_path):
    data = tmp_path / "d.jsonl"
    write_jsonl(data, [{"id": "a", "conversations": SYSTEM_MULTI}])
    first = build_dataset(_cfg(data))
    again = build_dataset(_cfg(data, num_proc=2))
    assert again.cached and again.path == first.path and not first.cached
    assert first.path.parent == tmp_path / "cache" / "datasets"
    base = cache_key(_cfg(data))
    variants = [dict(max_length=100), dict(chat_template="qwen"), dict(is_preformatted=True),
                dict(train_only_last_turn=True), dict(system_prompt="S"), dict(use_template_system_prompt=True)]
    keys = {cache_key(_cfg(data, **v)) for v in variants}
    assert base not in keys and len(keys) == len(variants)
    write_jsonl(data, [{"id": "a", "conversations": SINGLE}])
    changed = build_dataset(_cfg(data))
    assert changed.key != base and not changed.cached
    other_tok = BuildConfig(data_path=str(data), target_model_path=str(tokenizer_path("qwen3")))
    assert cache_key(other_tok) != changed.key


def test_output_folder_is_replaced_when_inputs_change(tmp_path):
    data = tmp_path / "d.jsonl"
    out = tmp_path / "out"
    write_jsonl(data, [{"id": "a", "conversations": SYSTEM_MULTI}])
    first = build_dataset(_cfg(data, output_dir=str(out)))
    assert build_dataset(_cfg(data, output_dir=str(out))).cached
    second = build_dataset(_cfg(data, output_dir=str(out), max_length=40))
    assert not second.cached and second.key != first.key
    assert all(len(r) <= 40 for r in load_from_disk(str(out))["input_ids"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_all_rows_skipped_is_an_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "conversations": SINGLE}])
    with pytest.raises(Exception, match="no usable row"):
        build_dataset(_cfg(data, is_preformatted=True))


def test_cli(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "conversations": SYSTEM_MULTI}])
    out = tmp_path / "out"
    argv = ["--data-path", data, "--target-model-path", str(tokenizer_path("smollm2")), "--chat-template", "qwen",
            "--max-length", "512", "--output-dir", str(out), "--draft-vocab-size", "32"]
    assert run_command("build-dataset", argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_out"] == 1 and summary["vocab_mapping"]["target_vocab_size"] == 49152
    assert load_from_disk(str(out)).column_names == ["id", "input_ids", "loss_mask"]
    assert run_command("build-dataset", ["--data-path", str(tmp_path / "missing.jsonl"), "--target-model-path",
                                         str(tokenizer_path("smollm2"))]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_hub_name_fingerprint_uses_the_loaded_tokenizer():
    from draftsmith.data.build import tokenizer_fingerprint

    smol, qwen3 = real_tokenizer("smollm2"), real_tokenizer("qwen3")
    a = tokenizer_fingerprint("org/not-a-local-dir", smol)
    assert a == tokenizer_fingerprint("org/not-a-local-dir", smol)
    assert a != tokenizer_fingerprint("org/not-a-local-dir", qwen3)


def test_config_errors(tmp_path):
    from draftsmith.data.build import config_from_args
    from draftsmith.cli import build_parser
    from draftsmith.errors import DraftsmithError

    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "conversations": SINGLE}])
    with pytest.raises(DraftsmithError, match="unknown chat template"):
        build_dataset(_cfg(data, chat_template="nope"))
    with pytest.raises(DraftsmithError, match="has no default system prompt"):
        build_dataset(_cfg(data, chat_template="gemma", use_template_system_prompt=True))
    with pytest.raises(DraftsmithError, match="cannot load tokenizer"):
        build_dataset(BuildConfig(data_path=data, target_model_path=str(tmp_path / "no-such-tokenizer")))
    parser, _ = build_parser("build-dataset")
    opt_in = config_from_args(parser.parse_args(["--data-path", data, "--target-model-path", "t", "--system-prompt"]))
    text = config_from_args(parser.parse_args(["--data-path", data, "--target-model-path", "t", "--system-prompt", "Hi"]))
    assert (opt_in.use_template_system_prompt, opt_in.system_prompt) == (True, None)
    assert (text.use_template_system_prompt, text.system_prompt) == (False, "Hi")


@pytest.mark.parametrize("tok_name,expected", [
    ("llama3_1", "Hello!<|eot_id|>Blue.<|eot_id|>"),
    ("qwen3", "Hello!<|im_end|><think>\nsky\n</think>\n\nBlue.\n<|im_end|>"),
])
def test_real_llama3_and_qwen3_tokenizers(tmp_path, tok_name, expected):
    conv = [dict(m) for m in SYSTEM_MULTI]
    if tok_name == "qwen3":
        conv[-1]["reasoning_content"] = "sky"
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "conversations": conv}])
    result = build_dataset(BuildConfig(data_path=data, target_model_path=str(tokenizer_path(tok_name))))
    row = load_from_disk(str(result.path))[0]
    tok = real_tokenizer(tok_name)
    assert row["input_ids"] == list(tok.apply_chat_template(conv, tokenize=True, return_dict=False))
    assert tok.decode([i for i, m in zip(row["input_ids"], row["loss_mask"]) if m]) == expected


# ------------------------------------------------------------- #16.4: template text is never supervised
_EDGE_ROWS = {
    "leading_assistant": [{"role": "assistant", "content": "An answer to a lost prompt."},
                          {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    "leading_tool_and_assistant": [{"role": "tool", "content": "{\"t\": 1}"},
                                   {"role": "assistant", "content": "Orphan reply."},
                                   {"role": "user", "content": "Name a color."},
                                   {"role": "assistant", "content": "Blue."}],
    "leading_system": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi there"},
                       {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"},
                       {"role": "assistant", "content": "Sure."}],
    "double_system": [{"role": "system", "content": "Be terse."}, {"role": "system", "content": "Be kind."},
                      {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    "no_user": [{"role": "system", "content": "Be terse."}, {"role": "assistant", "content": "Alone."}],
}
# (tokenizer, --chat-template, the end-of-turn token the model emits, rows the template refuses with its reason)
_EDGE_CASES = [
    ("smollm2", "hf", "<|im_end|>", {}),
    ("llama3_1", "hf", "<|eot_id|>", {}),
    ("qwen3", "hf", "<|im_end|>", {}),
    ("gemma3", "hf", "<end_of_turn>", {"double_system": "chat template cannot render the row"}),
    ("smollm2", "qwen", "<|im_end|>", {}),
    ("llama3_1", "llama3.1", "<|eot_id|>", {}),
    ("gemma3", "gemma", "<end_of_turn>", {}),
]


def _supervised_runs(tok, ids, mask) -> list[str]:
    runs, cur = [], []
    for token, m in zip(ids, mask):
        if m:
            cur.append(int(token))
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


@pytest.mark.parametrize("tokenizer,template,eot,refused", _EDGE_CASES, ids=[f"{t}-{c}" for t, c, _, _ in _EDGE_CASES])
def test_supervised_text_is_exactly_the_replies_after_the_first_user(tmp_path, tokenizer, template, eot, refused):
    """Leading replies are dropped (and counted) in every mode, so no template's default system
    prompt or date header is supervised; the reference is the row itself: each reply after the
    first user message, followed by the end-of-turn token, and nothing else."""
    rows = [{"id": name, "conversations": conv} for name, conv in _EDGE_ROWS.items()]
    cfg = BuildConfig(data_path=write_jsonl(tmp_path / "edge.jsonl", rows),
                      target_model_path=str(tokenizer_path(tokenizer)), chat_template=template,
                      output_dir=str(tmp_path / "out"))
    result = build_dataset(cfg)
    tok = real_tokenizer(tokenizer)
    built = {row["id"]: row for row in load_from_disk(str(result.path))}
    skipped = {s["id"]: s["reason"] for s in map(json.loads, (result.path / "skipped.jsonl").read_text().splitlines())}
    assert skipped == {"no_user": "no user message", **refused}
    assert result.report["dropped_leading"] == 3
    for name, conv in _EDGE_ROWS.items():
        if name in skipped:
            continue
        first_user = next(i for i, m in enumerate(conv) if m["role"] == "user")
        expected = [m["content"] + eot for m in conv[first_user:] if m["role"] == "assistant"]
        assert _supervised_runs(tok, built[name]["input_ids"], built[name]["loss_mask"]) == expected, name


def test_stages_that_read_conversations_skip_hostile_rows_and_say_so(tmp_path, capsys):
    """hidden-states and train tokenize conversations through load_tokenized (#12): a row nested
    100,000 levels deep and one with a lone surrogate cost those rows, never the run."""
    from draftsmith.data.build import load_tokenized

    conv = '"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]'
    path = write_jsonl(tmp_path / "hostile.jsonl", [
        {"id": "ok", "conversations": SINGLE},
        '{"id": "deep", ' + conv + ', "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": "sur", "conversations": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}'])
    ds, folder = load_tokenized(path, tokenizer=str(tokenizer_path("smollm2")), chat_template=None, max_length=256,
                                is_preformatted=False, flag="--data-path")
    assert ds["id"] == ["ok"]
    assert capsys.readouterr().err.strip() == (
        f"--data-path {path}: 2 of 3 rows skipped (1 invalid Unicode, 1 nesting too deep); see {folder / 'skipped.jsonl'}")


def test_a_row_that_breaks_the_tokenizer_or_the_renderer_costs_only_itself(tmp_path, monkeypatch):
    """The per-row fallbacks of build-dataset (#12): a batch whose tokenization fails is retried
    row by row, and an unforeseen exception while rendering skips the row as `internal error`."""
    from draftsmith.data import build, loss_mask

    real_tokenize, real_render = loss_mask.tokenize_with_mask, build.get_template("qwen").render

    def tokenize(backend, texts, spans):
        if any("BOOM" in t for t in texts):
            raise TypeError("cannot encode BOOM")
        return real_tokenize(backend, texts, spans)

    def render(self, messages, **kw):
        if messages[-1]["content"] == "CRASH":
            raise KeyError("renderer bug")
        return real_render(messages, **kw)

    monkeypatch.setattr(build, "tokenize_with_mask", tokenize)
    monkeypatch.setattr(type(build.get_template("qwen")), "render", render)
    rows = [{"id": "a", "conversations": SINGLE},
            {"id": "boom", "conversations": [{"role": "user", "content": "BOOM"}, {"role": "assistant", "content": "x"}]},
            {"id": "crash", "conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "CRASH"}]},
            {"id": "b", "conversations": SYSTEM_MULTI}]
    result = build_dataset(_cfg(write_jsonl(tmp_path / "d.jsonl", rows), chat_template="qwen"))
    assert result.report["rows_out"] == 2
    skipped = [json.loads(x) for x in (result.path / "skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["reason"], s["detail"]) for s in skipped] == [
        ("boom", "tokenizer cannot encode the row", "TypeError: cannot encode BOOM"),
        ("crash", "internal error", "KeyError: 'renderer bug'")]
    assert load_from_disk(str(result.path))["id"] == ["a", "b"]
