"""prepare-data: presets in their hub row shapes, the packaged ShareGPT file, malformed rows,
the normalization policy, determinism, --overwrite / --strict, and the hub-unreachable error."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from draftsmith import resources
from draftsmith.cli import run_command
from draftsmith.data.conversation import check_row
from draftsmith.data.formats import RowLimits, iter_records
from draftsmith.data.prepare import PrepareConfig, eval_count, prepare_data
from draftsmith.data.rowerrors import describe
from draftsmith.data.validate import validate_files
from draftsmith.errors import DraftsmithError

REPO = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prepare(tmp_path: Path, dataset: str, files: list[Path], **kw):
    kw.setdefault("output_dir", tmp_path / "out")
    kw.setdefault("overwrite", True)
    return prepare_data(PrepareConfig(dataset=dataset, data_path=files, progress=False, **kw))


def conv(*turns: tuple[str, str], **extra) -> list[dict]:
    return [{"role": r, "content": c, **extra} for r, c in turns]


def assert_counts_add_up(result) -> None:
    s = result.summary
    assert s["read"] == s["written"] + s["skipped"]
    assert s["written"] == s["train"] + s["eval"]
    assert s["skipped"] == sum(s["skipped_by_reason"].values())
    assert len(read_jsonl(result.skipped_path)) == s["skipped"]
    written = read_jsonl(result.train_path) + (read_jsonl(result.eval_path) if result.eval_path else [])
    assert len(written) == s["written"]
    assert len({r["id"] for r in written}) == len(written)
    for row in written:
        assert check_row(row)[1] is None, row


# ------------------------------------------------------------------ the packaged ShareGPT file

@pytest.fixture(scope="module")
def sharegpt_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharegpt")
    return prepare_data(PrepareConfig(dataset="sharegpt", data_path=[resources.sharegpt_json()], output_dir=out,
                                      split_eval=True, progress=False))


def test_packaged_sharegpt_comes_through_with_counts_adding_up(sharegpt_result):
    s = sharegpt_result.summary
    assert s["read"] == 17_671 + 1  # every complete record + the broken tail
    assert s["written"] >= 17_000
    assert s["read"] == s["written"] + s["skipped"] and s["written"] == s["train"] + s["eval"]
    assert s["skipped"] == sum(s["skipped_by_reason"].values())
    assert s["skipped_by_reason"]["no messages"] == 126
    assert s["skipped_by_reason"]["truncated JSON"] == 1
    assert s["eval"] == round(0.05 * s["written"])
    skipped = read_jsonl(sharegpt_result.skipped_path)
    assert len(skipped) == s["skipped"]
    assert skipped[-1]["reason"] == "truncated JSON" and skipped[-1]["index"] == 17_671 and skipped[-1]["line"] > 600_000
    # every written row passes the shared row check; ids are unique across train and eval
    report = validate_files([sharegpt_result.train_path, sharegpt_result.eval_path])
    assert report.ok and "duplicate id" not in report.warnings
    assert [f.valid for f in report.files] == [s["train"], s["eval"]]


def test_packaged_sharegpt_first_row_is_the_source_conversation(sharegpt_result):
    source = next(iter_records(resources.sharegpt_json())).value
    first = json.loads(sharegpt_result.train_path.open(encoding="utf-8").readline())
    if first["id"] != source["id"]:  # row 0 went to eval
        first = next(r for r in read_jsonl(sharegpt_result.eval_path) if r["id"] == source["id"])
    roles = {"human": "user", "gpt": "assistant"}
    assert first["conversations"] == [{"role": roles[m["from"]], "content": m["value"]}
                                      for m in source["conversations"]]


# ------------------------------------------------------------------ presets in their hub row shapes

def ultrachat_rows() -> list[dict]:
    return [
        {"prompt": "How do tides work?", "prompt_id": "u1",
         "messages": conv(("user", "How do tides work?"), ("assistant", "The moon pulls the oceans."),
                          ("user", "And the sun?"), ("assistant", "It adds a weaker pull."))},
        {"prompt": "Name a prime.", "prompt_id": "u2",
         "messages": conv(("user", "Name a prime."), ("assistant", "7"))},
        {"prompt": "broken", "prompt_id": None, "messages": conv(("user", "x"), ("assistant", "y"))},
    ]


def test_ultrachat_preset_jsonl_and_parquet_give_identical_output(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_jsonl(tmp_path / "uc.jsonl", ultrachat_rows())
    parquet = tmp_path / "uc.parquet"
    pq.write_table(pa.Table.from_pylist(ultrachat_rows()), parquet)
    a = prepare(tmp_path, "ultrachat", [jsonl], output_dir=tmp_path / "a")
    b = prepare(tmp_path, "ultrachat", [parquet], output_dir=tmp_path / "b")
    rows = read_jsonl(a.train_path)
    assert [r["id"] for r in rows] == ["u1", "u2"]  # id = prompt_id
    assert rows[0]["conversations"] == ultrachat_rows()[0]["messages"]
    assert a.train_path.read_bytes() == b.train_path.read_bytes()
    assert read_jsonl(a.skipped_path) == [{"source": str(jsonl), "line": 3, "reason": "missing id", "field": "id"}]
    assert read_jsonl(b.skipped_path) == [{"source": str(parquet), "index": 2, "reason": "missing id", "field": "id"}]
    assert_counts_add_up(a)


def test_hub_path_uses_load_dataset_with_the_preset_split(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ultrachat_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = prepare(tmp_path, "ultrachat", [])
    assert calls == [("HuggingFaceH4/ultrachat_200k", None, "train_sft")]
    assert result.summary["sources"] == ["HuggingFaceH4/ultrachat_200k:train_sft"]
    assert [r["id"] for r in read_jsonl(result.train_path)] == ["u1", "u2"]
    assert read_jsonl(result.skipped_path)[0]["source"] == "HuggingFaceH4/ultrachat_200k:train_sft"
    prepare(tmp_path, "ultrachat", [], split="test_sft")
    assert calls[-1] == ("HuggingFaceH4/ultrachat_200k", None, "test_sft")
    calls.clear()
    prepare(tmp_path, "gsm8k", [])
    assert calls == [("openai/gsm8k", "main", "train")]


def test_any_chat_shaped_hub_dataset_by_name(tmp_path, monkeypatch):
    import datasets

    rows = [{"prompt": "q", "prompt_id": "p1", "category": "Chat",
             "messages": conv(("user", "q"), ("assistant", "a"))},
            {"id": "keep", "conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}]
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return rows  # a list of dicts iterates like a Dataset (mixed row shapes do not fit one Arrow schema)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = prepare(tmp_path, "HuggingFaceH4/no_robots", [], split="train_sft")
    assert calls == [("HuggingFaceH4/no_robots", None, "train_sft")]
    assert result.out_dir.name == "no_robots"
    assert read_jsonl(result.train_path) == [
        {"id": "no_robots-0", "conversations": conv(("user", "q"), ("assistant", "a"))},
        {"id": "keep", "conversations": conv(("user", "q2"), ("assistant", "a2"))}]


def test_hub_rows_get_the_limits_and_unicode_policy_of_file_rows(tmp_path, monkeypatch):
    import datasets

    good = {"id": "ok", "conversations": conv(("user", "q"), ("assistant", "a"))}
    rows = [good, {"id": "nul", "conversations": conv(("user", "q\x00"), ("assistant", "a"))},
            {**good, "id": "deep", "meta": [[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]}]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None, **kw: rows)
    result = prepare(tmp_path, "org/chat", [], limits=RowLimits(max_row_depth=16))
    assert [r["id"] for r in read_jsonl(result.train_path)] == ["ok"]
    assert [(s["index"], s["reason"], s["detail"]) for s in read_jsonl(result.skipped_path)] == [
        (1, "invalid Unicode", "NUL character in conversations[0].content"),
        (2, "nesting too deep", "deeper than --max-row-depth 16 at meta[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]")]


def test_hub_unreachable_names_the_dataset_and_data_path(tmp_path, monkeypatch, capsys):
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'Aeala/ShareGPT_Vicuna_unfiltered' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DraftsmithError, match=r"Aeala/ShareGPT_Vicuna_unfiltered.*\n.*--data-path"):
        prepare(tmp_path, "sharegpt", [])
    assert run_command("prepare-data", ["--dataset", "sharegpt", "--output-path", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Aeala/ShareGPT_Vicuna_unfiltered" in err and "--data-path" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "sharegpt").exists()


def test_hub_offline_for_real_through_the_script(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--dataset", "ultrachat",
                           "--output-path", str(tmp_path / "o")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "HuggingFaceH4/ultrachat_200k" in proc.stderr and "--data-path" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sharegpt_role_aliases_and_system_policy(tmp_path):
    rows = [
        {"id": "s1", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "Human", "value": "hi"},
                                       {"from": "chatgpt", "value": "hello"}, {"from": "user", "value": "and?"},
                                       {"from": "bing", "value": "b"}, {"from": "system", "value": "late"},
                                       {"from": "human", "value": "more"}, {"from": "bard", "value": "c"}]},
        {"id": "s2", "conversations": [{"from": "human", "value": "q"}, {"from": "narrator", "value": "x"}]},
    ]
    result = prepare(tmp_path, "sharegpt", [write_jsonl(tmp_path / "sg.jsonl", rows)])
    (row,) = read_jsonl(result.train_path)
    assert row == {"id": "s1", "conversations": conv(
        ("system", "Be brief."), ("user", "hi"), ("assistant", "hello"), ("user", "and?"), ("assistant", "b"),
        ("user", "more"), ("assistant", "c"))}
    assert result.summary["normalized"]["dropped_system"] == 1
    assert read_jsonl(result.skipped_path)[0]["reason"] == "unknown role 'narrator'"


def test_question_answer_presets_on_their_row_shapes(tmp_path):
    gsm8k = prepare(tmp_path, "gsm8k", [resources.gsm8k_test()], output_dir=tmp_path / "g")
    assert gsm8k.summary["written"] == 1319 and gsm8k.summary["skipped"] == 0
    first_src = json.loads(resources.gsm8k_test().open(encoding="utf-8").readline())
    first = json.loads(gsm8k.train_path.open(encoding="utf-8").readline())
    assert first == {"id": "gsm8k-0", "conversations": conv(("user", first_src["question"]),
                                                             ("assistant", first_src["answer"]))}
    math_rows = [{"query": "1+1?", "response": "2", "type": "GSM_Rephrased", "original_question": "1+1"},
                 {"query": "2+2?", "response": "", "type": "MATH_AnsAug", "original_question": "2+2"}]
    mm = prepare(tmp_path, "metamathqa", [write_jsonl(tmp_path / "mm.jsonl", math_rows)], output_dir=tmp_path / "m")
    assert read_jsonl(mm.train_path) == [{"id": "metamathqa-0", "conversations": conv(("user", "1+1?"),
                                                                                      ("assistant", "2"))}]
    assert read_jsonl(mm.skipped_path) == [{"source": str(tmp_path / "mm.jsonl"), "line": 2, "id": "metamathqa-1",
                                            "reason": "empty content", "field": "conversations[1].content"}]
    code_rows = [{"instruction": "Reverse a list in Python.", "response": "```python\nxs[::-1]\n```"}]
    mc = prepare(tmp_path, "magicoder", [write_jsonl(tmp_path / "mc.jsonl", code_rows)], output_dir=tmp_path / "c")
    assert read_jsonl(mc.train_path)[0]["conversations"][1]["content"] == "```python\nxs[::-1]\n```"


def test_positional_ids_count_unreadable_rows_across_files_and_workers(tmp_path):
    qa = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(600)]
    first = write_jsonl(tmp_path / "1.jsonl", qa[:100] + ["{broken"] + qa[100:299])
    second = write_jsonl(tmp_path / "2.jsonl", qa[299:])
    outputs = []
    for num_proc in (1, 2, 3):
        result = prepare(tmp_path, "gsm8k", [first, second], num_proc=num_proc, output_dir=tmp_path / str(num_proc))
        ids = [r["id"] for r in read_jsonl(result.train_path)]
        assert ids == [f"gsm8k-{n}" for n in range(601) if n != 100]
        assert read_jsonl(result.skipped_path)[0]["line"] == 101
        outputs.append([p.read_bytes() for p in sorted(result.out_dir.iterdir())])
    assert outputs[0] == outputs[1] == outputs[2]


# ------------------------------------------------------------------ malformed rows and the policy

MALFORMED = [  # (row or raw line, expected reason)
    ("{not json", "invalid JSON"),
    ([1, 2], "row is not an object"),
    ({"conversations": conv(("user", "a"), ("assistant", "b"))}, "missing id"),
    ({"id": 7, "conversations": conv(("user", "a"), ("assistant", "b"))}, "id is not a string"),
    ({"id": "  ", "conversations": conv(("user", "a"), ("assistant", "b"))}, "empty id"),
    ({"id": "m0"}, "no messages"),
    ({"id": "m1", "conversations": []}, "no messages"),
    ({"id": "m2", "conversations": "hi"}, "conversations is not a list"),
    ({"id": "m3", "conversations": ["hi", {"role": "assistant", "content": "b"}]}, "message is not an object"),
    ({"id": "m4", "conversations": [{"content": "a"}, {"role": "assistant", "content": "b"}]}, "missing role"),
    ({"id": "m5", "conversations": conv(("user", "a"), ("robot", "b"))}, "unknown role 'robot'"),
    ({"id": "m6", "conversations": conv(("user", " \n"), ("assistant", "b"))}, "empty content"),
    ({"id": "m7", "conversations": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]},
     "content is not a string"),
    ({"id": "m8", "conversations": [{"role": "user"}, {"role": "assistant", "content": "b"}]}, "missing content"),
    ({"id": "m9", "conversations": conv(("user", "a"), ("user", "b"))}, "no assistant reply"),
    ({"id": "m10", "conversations": conv(("system", "s"), ("assistant", "b"))}, "no user message"),
    ({"id": "m11", "conversations": conv(("assistant", "b"), ("user", "a"))}, "no assistant reply after a user message"),
    ({"id": "m12", "text": 5}, "text is not a string"),
    ({"id": "m13", "text": ""}, "empty text"),
    ({"id": "m14", "conversations": [{"role": "user", "content": "a"},
                                     {"role": "assistant", "content": "b", "tool_calls": {"x": 1}}]},
     "tool_calls is not a list"),
    ({"id": "m15", "conversations": [{"role": "user", "content": "a"},
                                     {"role": "assistant", "content": "b", "reasoning_content": ["r"]}]},
     "reasoning_content is not a string"),
]
GOOD = {"id": "ok", "conversations": conv(("user", "a"), ("assistant", "b"))}


def test_every_malformed_row_is_skipped_with_its_line_and_reason(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD] + [row for row, _ in MALFORMED] + [{"id": "pre", "text": "t"}])
    argv = ["--dataset", "custom", "--data-path", str(path), "--output-dir", str(tmp_path / "o")]
    assert run_command("prepare-data", argv) == 0
    out = tmp_path / "o" / "custom"
    skipped = read_jsonl(out / "custom_skipped.jsonl")
    assert [(s["line"], s["reason"]) for s in skipped] == [(i + 2, reason) for i, (_, reason) in enumerate(MALFORMED)]
    assert all(s["source"] == str(path) for s in skipped)
    assert {s["id"] for s in skipped if "id" in s} == {f"m{i}" for i in range(16)}
    summary = json.loads((out / "custom_summary.json").read_text(encoding="utf-8"))
    assert (summary["read"], summary["written"], summary["skipped"]) == (len(MALFORMED) + 2, 2, len(MALFORMED))
    assert summary["kinds"] == {"conversation": 1, "preformatted": 1}
    assert read_jsonl(out / "custom_train.jsonl") == [GOOD, {"id": "pre", "text": "t"}]
    assert "skipped" in capsys.readouterr().out

    # --strict: the first bad row ends the run with its skipped-file description, exit 2, output untouched
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    assert run_command("prepare-data", argv + ["--strict", "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --strict: {describe(skipped[0])}"
    assert describe(skipped[0]).startswith(f"{path}, line 2")
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before


def test_normalization_policy(tmp_path):
    call = [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}]
    rows = [
        {"id": "lead", "conversations": conv(("system", "S"), ("assistant", "orphan reply"), ("user", "q"),
                                            ("user", "q2"), ("assistant", "a"), ("assistant", "a2"), ("user", "bye"))},
        {"id": "tools", "messages": [
            {"role": "user", "content": "add 1"},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "content": "1", "tool_call_id": "c1"},
            {"role": "tool", "content": "2", "tool_call_id": "c2"},
            {"role": "assistant", "content": "It is 1.", "reasoning_content": "think"}]},
    ]
    result = prepare(tmp_path, "custom", [write_jsonl(tmp_path / "p.jsonl", rows)])
    lead, tools = read_jsonl(result.train_path)
    assert lead["conversations"] == conv(("system", "S"), ("user", "q\n\nq2"), ("assistant", "a\n\na2"))
    assert tools["conversations"] == [
        {"role": "user", "content": "add 1"},
        {"role": "assistant", "content": "", "tool_calls": call},
        {"role": "tool", "content": "1", "tool_call_id": "c1"},
        {"role": "tool", "content": "2", "tool_call_id": "c2"},
        {"role": "assistant", "content": "It is 1.", "reasoning_content": "think"}]
    assert result.summary["normalized"] == {"merged": 2, "dropped_system": 0, "dropped_leading": 1,
                                            "dropped_trailing": 1}


def test_duplicate_ids_are_renamed_in_input_order(tmp_path):
    rows = [{**GOOD, "id": i} for i in ("a", "a", "b", "a", "a#2")]
    result = prepare(tmp_path, "custom", [write_jsonl(tmp_path / "d.jsonl", rows)])
    assert [r["id"] for r in read_jsonl(result.train_path)] == ["a", "a#2", "b", "a#3", "a#2#2"]
    assert result.summary["duplicates"] == 3
    assert_counts_add_up(result)


# ------------------------------------------------------------------ determinism, options, files

def test_same_input_and_seed_give_byte_identical_files_across_num_proc(tmp_path):
    src = resources.sharegpt_json()
    outs = []
    for i, (num_proc, seed) in enumerate([(1, 3), (2, 3), (1, 3), (1, 4)]):
        r = prepare(tmp_path, "sharegpt", [src], output_dir=tmp_path / str(i), num_samples=800,
                    split_eval=True, eval_ratio=0.1, seed=seed, num_proc=num_proc)
        assert r.summary["written"] == 800 and r.summary["eval"] == 80
        assert_counts_add_up(r)
        outs.append({p.name: p.read_bytes() for p in sorted(r.out_dir.iterdir())})
    assert outs[0] == outs[1] == outs[2]
    assert outs[0]["sharegpt_train.jsonl"] != outs[3]["sharegpt_train.jsonl"]  # another seed, another split
    assert outs[0]["sharegpt_skipped.jsonl"] == outs[3]["sharegpt_skipped.jsonl"]


def test_eval_rows_are_the_seeded_sample_and_both_files_keep_input_order(tmp_path):
    import random

    rows = [{**GOOD, "id": f"r{i}", "conversations": conv(("user", "é" * (i + 1)), ("assistant", "x"))} for i in range(100)]
    result = prepare(tmp_path, "custom", [write_jsonl(tmp_path / "r.jsonl", rows)], split_eval=True, seed=7)
    expected_eval = sorted(random.Random(7).sample(range(100), 5))
    assert [r["id"] for r in read_jsonl(result.eval_path)] == [f"r{i}" for i in expected_eval]
    assert [r["id"] for r in read_jsonl(result.train_path)] == [f"r{i}" for i in range(100) if i not in expected_eval]
    together = read_jsonl(result.train_path) + read_jsonl(result.eval_path)
    assert sorted(together, key=lambda r: int(r["id"][1:])) == rows  # none lost or changed


def test_eval_count_bounds():
    assert [eval_count(n, 0.05) for n in (0, 1, 2, 10, 100, 17_322)] == [0, 0, 1, 1, 5, 866]
    assert eval_count(10, 0.99) == 9


def test_existing_output_needs_overwrite_and_overwrite_replaces_it(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    argv = ["--data-path", str(path), "--output-path", str(tmp_path / "o"), "--name", "mine"]
    assert run_command("prepare-data", argv + ["--split-eval", "--eval-ratio", "0.5"]) == 0
    out = tmp_path / "o" / "mine"
    assert (out / "mine_eval.jsonl").exists()
    before = (out / "mine_train.jsonl").read_bytes()
    capsys.readouterr()
    assert run_command("prepare-data", argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert (out / "mine_train.jsonl").read_bytes() == before and (out / "mine_eval.jsonl").exists()
    write_jsonl(path, [GOOD, {**GOOD, "id": "two"}])
    assert run_command("prepare-data", argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mine_skipped.jsonl", "mine_summary.json", "mine_train.jsonl"]
    assert len(read_jsonl(out / "mine_train.jsonl")) == 2
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["mine"]  # no staging leftovers


def test_num_samples_stops_after_n_written_rows(tmp_path):
    rows = [GOOD | {"id": "x"}, {"id": "bad"}, *({**GOOD, "id": f"r{i}"} for i in range(10))]
    result = prepare(tmp_path, "custom", [write_jsonl(tmp_path / "s.jsonl", rows)], num_samples=3)
    assert [r["id"] for r in read_jsonl(result.train_path)] == ["x", "r0", "r1"]
    assert (result.summary["read"], result.summary["written"], result.summary["skipped"]) == (4, 3, 1)


def test_several_files_folders_gzip_and_json_arrays(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.json").write_text(json.dumps([GOOD, {**GOOD, "id": "b"}], indent=2), encoding="utf-8")
    with gzip.open(data / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({**GOOD, "id": "c"}) + "\n")
    (data / "notes.txt").write_text("ignored", encoding="utf-8")
    extra = write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "id": "d"}])
    result = prepare(tmp_path, "custom", [data, extra])
    assert [r["id"] for r in read_jsonl(result.train_path)] == ["ok", "b", "c", "d"]
    assert result.summary["sources"] == [str(data / "a.json"), str(data / "c.jsonl.gz"), str(extra)]


def test_merged_file_made_with_cat_is_valid_input(tmp_path):
    a = prepare(tmp_path, "custom", [write_jsonl(tmp_path / "a.jsonl", [GOOD, {**GOOD, "id": "x"}])],
                output_dir=tmp_path / "a")
    b = prepare(tmp_path, "custom", [write_jsonl(tmp_path / "b.jsonl", [GOOD, {"id": "t", "text": "pre"}])],
                output_dir=tmp_path / "b")
    merged = tmp_path / "merged.jsonl"
    merged.write_bytes(a.train_path.read_bytes() + b.train_path.read_bytes())
    report = validate_files([merged])
    assert report.ok and report.warnings["duplicate id"].count == 1
    again = prepare(tmp_path, "custom", [merged], output_dir=tmp_path / "m")
    assert [r["id"] for r in read_jsonl(again.train_path)] == ["ok", "x", "ok#2", "t"]
    assert again.summary["duplicates"] == 1


def test_bad_settings_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    for kw, message in [({"eval_ratio": 1.0, "split_eval": True}, "--eval-ratio"), ({"num_proc": 0}, "--num-proc"),
                        ({"num_samples": 0}, "--num-samples"), ({"name": "../x"}, "--name"),
                        ({"split": "test"}, "--split")]:
        with pytest.raises(DraftsmithError, match=message):
            prepare(tmp_path, "custom", [path], **kw)
    with pytest.raises(DraftsmithError, match="unknown dataset 'nope'.*ultrachat.*org/name"):
        prepare(tmp_path, "nope", [path])
    with pytest.raises(DraftsmithError, match="local-only"):
        prepare(tmp_path, "custom", [])
    with pytest.raises(DraftsmithError, match="no such file"):
        prepare(tmp_path, "custom", [tmp_path / "missing.jsonl"])


def test_a_failing_converter_costs_its_rows_not_the_run(tmp_path, monkeypatch):
    from draftsmith.data import presets

    def broken(raw, ordinal):
        if ordinal % 2:
            raise ValueError("converter bug")
        return raw

    monkeypatch.setitem(presets.PRESETS, "broken", presets.Preset("broken", None, "train", broken))
    path = write_jsonl(tmp_path / "a.jsonl", [{**GOOD, "id": str(i)} for i in range(600)])
    for num_proc in (1, 2):
        result = prepare(tmp_path, "broken", [path], num_proc=num_proc, overwrite=True)
        assert (result.summary["written"], result.summary["skipped_by_reason"]) == (300, {"internal error": 300})
        skipped = read_jsonl(result.skipped_path)
        assert [s["line"] for s in skipped] == list(range(2, 601, 2))
        assert (skipped[0]["reason"], skipped[0]["detail"], skipped[0]["id"]) == ("internal error", "ValueError: converter bug", "1")
    # --strict: the first such row stops the run; the previous output is untouched, no staging folder is left
    old = (tmp_path / "out" / "broken" / "broken_train.jsonl").read_bytes()
    for num_proc in (1, 2):
        with pytest.raises(DraftsmithError, match=r"--strict: .*a.jsonl, line 2, id '1': internal error "
                                                  r"\(ValueError: converter bug\)"):
            prepare(tmp_path, "broken", [path], num_proc=num_proc, overwrite=True, strict=True)
        assert (tmp_path / "out" / "broken" / "broken_train.jsonl").read_bytes() == old
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["broken"]


def test_a_killed_worker_is_an_error_not_a_hang(tmp_path, monkeypatch):
    from draftsmith.data import presets

    def dies(raw, ordinal):
        if ordinal == 300:  # in the second batch: the second worker's
            os._exit(9)
        return raw

    monkeypatch.setitem(presets.PRESETS, "dies", presets.Preset("dies", None, "train", dies))
    path = write_jsonl(tmp_path / "a.jsonl", [{**GOOD, "id": str(i)} for i in range(600)])
    with pytest.raises(RuntimeError, match="worker died"):
        prepare(tmp_path, "dies", [path], num_proc=2)


def test_fast_message_path_agrees_with_the_full_check():
    from draftsmith.data.conversation import _canonical_message, _plain_message

    variants = [{"role": "user", "content": "a"}, {"from": "gpt", "value": "b"}, {"role": "Human", "content": "c"},
                {"role": "user", "value": "d"}, {"from": "bard", "content": "e"}, {"role": "user", "content": " "},
                {"role": "robot", "content": "f"}, {"role": ["user"], "content": "g"}, {"role": "user", "content": 1},
                {"role": "user", "from": "gpt"}, {"role": "assistant", "tool_calls": [{"id": "1"}]},
                {"role": "tool", "content": "r", "tool_call_id": "1"}, ["user", "x"], {"role": "system", "content": "s"}]
    for msg in variants:
        fast = _plain_message(msg)
        if fast is not None:
            assert (fast, None) == _canonical_message(msg, "m"), msg
    assert sum(_plain_message(m) is not None for m in variants) == 5
