"""validate-data and the row check it shares with build-dataset: every problem kind, its
positions, merged files, json/parquet inputs, exit codes, and the streaming readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from draftsmith.cli import run_command
from draftsmith.data.conversation import check_row, find_problem
from draftsmith.data.formats import INVALID_JSON, INVALID_UNICODE, TRUNCATED_JSON, RowLimits, iter_records
from draftsmith.data.validate import validate_files
from draftsmith.errors import InputError

GOOD = {"id": "a", "conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PRE = {"id": "p", "text": "<|im_start|>user\nhi<|im_end|>"}


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def with_messages(*messages) -> dict:
    return {"id": "x", "conversations": list(messages)}


@pytest.mark.parametrize("row, kind, reason, field", [
    (GOOD, "conversation", None, None),
    (PRE, "preformatted", None, None),
    ({**GOOD, "conversations": GOOD["conversations"] + [{"role": "tool", "content": "r", "tool_call_id": "1"},
                                                        {"role": "system", "content": "s"}]},
     "conversation", None, None),
    (with_messages({"role": "user", "content": "q"},
                   {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}), "conversation", None, None),
    ("text", "conversation", "row is not an object", None),
    ({"conversations": []}, "conversation", "missing id", "id"),
    ({"id": None, "text": "t"}, "preformatted", "missing id", "id"),
    ({"id": 3, "text": "t"}, "preformatted", "id is not a string", "id"),
    ({"id": "", "text": "t"}, "preformatted", "empty id", "id"),
    ({"id": "x", "text": "  "}, "preformatted", "empty text", "text"),
    ({"id": "x", "text": ["t"]}, "preformatted", "text is not a string", "text"),
    ({"id": "x"}, "conversation", "no messages", "conversations"),
    ({"id": "x", "conversations": []}, "conversation", "no messages", "conversations"),
    ({"id": "x", "conversations": {"role": "user"}}, "conversation", "conversations is not a list", "conversations"),
    ({"id": "x", "messages": GOOD["conversations"]}, "conversation", "no messages", "conversations"),
    (with_messages("hi"), "conversation", "message is not an object", "conversations[0]"),
    (with_messages({"from": "human", "value": "hi"}), "conversation", "missing role", "conversations[0].role"),
    (with_messages({"role": "gpt", "content": "hi"}), "conversation", "unknown role 'gpt'", "conversations[0].role"),
    (with_messages({"role": "user", "content": "q"}, {"role": "assistant", "content": ""}), "conversation",
     "empty content", "conversations[1].content"),
    (with_messages({"role": "user", "content": "q"}, {"role": "assistant"}), "conversation",
     "missing content", "conversations[1].content"),
    (with_messages({"role": "user", "content": ["q"]}), "conversation", "content is not a string",
     "conversations[0].content"),
    (with_messages({"role": "user", "content": "q"}), "conversation", "no assistant reply", "conversations"),
    (with_messages({"role": None, "content": "q"}), "conversation", "role is not a string", "conversations[0].role"),
    (with_messages({"role": "x" * 40, "content": "q"}), "conversation", f"unknown role '{'x' * 32}'",
     "conversations[0].role"),
    (with_messages({"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}), "conversation",
     "no user message", "conversations"),
    (with_messages({"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}), "conversation",
     "no assistant reply after a user message", "conversations"),
])
def test_check_row_kinds_and_reasons(row, kind, reason, field):
    assert check_row(row) == (kind, reason)
    got_kind, problem = find_problem(row)
    assert got_kind == kind and (problem.field if problem else None) == field


def test_valid_files_pass_with_exit_0(tmp_path, capsys):
    conv = write_lines(tmp_path / "conv.jsonl", [GOOD, {**GOOD, "id": "b"}])
    pre = write_lines(tmp_path / "pre.jsonl", [PRE])
    assert run_command("validate-data", [str(conv), str(pre)]) == 0
    out = capsys.readouterr().out
    assert "2 valid (2 conversation)" in out and "1 valid (1 preformatted)" in out and out.rstrip().endswith("OK (2 files)")
    assert sorted(tmp_path.iterdir()) == sorted([conv, pre])  # writes nothing


def test_problems_are_counted_per_kind_with_first_positions(tmp_path, capsys):
    rows = [GOOD] + [{"id": f"r{i}", "conversations": []} for i in range(7)] + ["{oops", {**GOOD, "id": 5}]
    path = write_lines(tmp_path / "bad.jsonl", rows)
    report = validate_files([path], max_examples=3)
    assert not report.ok and report.rows == 10 and report.invalid == 9
    assert report.problems["no messages"].count == 7
    assert report.problems["no messages"].examples == [f"{path}:{n} (conversations)" for n in (2, 3, 4)]
    assert report.problems["invalid JSON"].examples[0].startswith(f"{path}:9 (")
    assert report.problems["id is not a string"].examples == [f"{path}:10 (id)"]
    assert run_command("validate-data", [str(path), "--max-examples", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2 (conversations), {path}:3 (conversations), ..." in out
    assert "INVALID: 9 of 10 rows" in out
    assert run_command("validate-data", [str(path), "--json"]) == 1
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["ok"] is False and as_json["problems"]["no messages"]["count"] == 7


def test_merged_files_made_with_cat(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [GOOD, {**GOOD, "id": "b"}])
    b = write_lines(tmp_path / "b.jsonl", [{**GOOD, "id": "c"}, GOOD])
    merged = tmp_path / "merged.jsonl"
    merged.write_bytes(a.read_bytes() + b.read_bytes())
    report = validate_files([merged])
    assert report.ok and report.rows == 4
    assert report.warnings["duplicate id"].examples == [f"{merged}:4 (id 'a', first at {merged}:1)"]
    # a file without its final newline glues two rows together: reported, not silently lost
    unterminated = tmp_path / "no_newline.jsonl"
    unterminated.write_bytes(a.read_bytes().rstrip(b"\n"))
    glued = tmp_path / "glued.jsonl"
    glued.write_bytes(unterminated.read_bytes() + b.read_bytes())
    report = validate_files([glued])
    assert report.problems["invalid JSON"].count == 1 and report.problems["invalid JSON"].examples[0].startswith(f"{glued}:2")


def test_json_array_parquet_and_mixed_kinds(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps([GOOD, {"id": "b"}], indent=1), encoding="utf-8")
    report = validate_files([arr])
    assert report.problems["no messages"].examples == [f"{arr}:15 (conversations)"]  # the line where the record starts
    pq_path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([PRE, {"id": "q", "text": ""}]), pq_path)
    report = validate_files([pq_path])
    assert report.problems["empty text"].examples == [f"{pq_path}[1] (text)"]
    mixed = write_lines(tmp_path / "mixed.jsonl", [GOOD, PRE])
    report = validate_files([mixed])
    assert report.ok and report.warnings["mixes conversation and pre-formatted rows"].count == 1


def test_empty_missing_and_unsupported_files(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert run_command("validate-data", [str(empty)]) == 1
    assert "empty file" in capsys.readouterr().out
    with pytest.raises(InputError, match="no such file"):
        validate_files([empty, tmp_path / "missing.jsonl"])
    assert run_command("validate-data", [str(tmp_path / "data.csv")]) == 2
    assert "unsupported file type" in capsys.readouterr().err


# ------------------------------------------------------------------ the readers

def test_jsonl_reader_reports_bad_lines_and_keeps_the_rest(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{bad\n{"b": "\xff"}\n[1]\n{"c": "\xc3\xa9"}')
    records = list(iter_records(path))
    assert [(r.line, r.value, r.error) for r in records] == [
        (1, {"a": 1}, None), (3, None, INVALID_JSON), (4, None, INVALID_UNICODE), (5, [1], None), (6, {"c": "é"}, None)]
    assert "not UTF-8" in records[2].detail


def test_jsonl_reader_decodes_only_wanted_rows(tmp_path):
    path = write_lines(tmp_path / "w.jsonl", [{"n": 0}, "{bad", "", {"n": 3}])
    records = list(iter_records(path, wanted=lambda i: i != 1))
    assert [(r.line, r.value, r.error) for r in records] == [(1, {"n": 0}, None), (2, None, None), (4, {"n": 3}, None)]


@pytest.mark.parametrize("text, expected", [
    ('[\n {"a": 1},\n {"b": 2}\n]\n', [(2, 0, {"a": 1}, None), (3, 1, {"b": 2}, None)]),
    ("[]", []),
    ('[\n {"a": 1},\n {"b": "cut', [(2, 0, {"a": 1}, None), (3, 1, None, TRUNCATED_JSON)]),
    ('[{"a": 1},', [(1, 0, {"a": 1}, None), (1, 1, None, TRUNCATED_JSON)]),
    ('[{"a": 1}', [(1, 0, {"a": 1}, None), (1, 1, None, TRUNCATED_JSON)]),
    ('[{"a": 1}, {"b": tru e}, {"c": 3}]', [(1, 0, {"a": 1}, None), (1, 1, None, INVALID_JSON)]),
    ('[{"a": 1}] extra', [(1, 0, {"a": 1}, None), (1, 1, None, INVALID_JSON)]),
    ('{"a": 1}\n{"b": 2}\n', [(1, None, {"a": 1}, None), (2, None, {"b": 2}, None)]),  # JSON Lines named .json
])
def test_json_reader(tmp_path, text, expected):
    path = tmp_path / "x.json"
    path.write_text(text, encoding="utf-8")
    assert [(r.line, r.index, r.value, r.error) for r in iter_records(path)] == expected


def test_json_array_reader_across_buffer_refills(tmp_path, monkeypatch):
    from draftsmith.data import formats

    monkeypatch.setattr(formats, "_CHUNK_BYTES", 7)  # every record and string straddles a refill
    rows = [{"id": str(i), "text": "é" * i + "\n"} for i in range(40)] + [12345, "s", None, True]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    records = list(iter_records(path))
    assert [r.value for r in records] == rows and all(r.error is None for r in records)
    assert [r.line for r in records[:2]] == [2, 6]
    path.write_text(json.dumps(rows, indent=2)[:-30], encoding="utf-8")
    *complete, tail = iter_records(path)
    assert [r.value for r in complete] == rows[:len(complete)] and tail.error == TRUNCATED_JSON


def test_cut_gzip_and_corrupt_parquet_keep_the_rows_before_the_damage(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = "".join(json.dumps({**GOOD, "id": str(i), "pad": "x" * 200}) + "\n" for i in range(200)).encode()
    packed = gzip.compress(lines)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    *rows, tail = iter_records(cut)
    assert rows and all(r.error is None for r in rows[:-1]) and tail.error == TRUNCATED_JSON
    assert tail.line == len(rows) + 1
    cut_array = tmp_path / "cut.json.gz"
    array = [{**GOOD, "id": str(i), "pad": str(i) * 40} for i in range(3000)]
    packed = gzip.compress(json.dumps(array).encode())
    cut_array.write_bytes(packed[: len(packed) * 9 // 10])
    *rows, tail = iter_records(cut_array)
    assert len(rows) > 1500 and [r.value for r in rows] == array[:len(rows)]
    assert tail.error == TRUNCATED_JSON and tail.index == len(rows)

    table = pa.Table.from_pylist([{**GOOD, "id": str(i)} for i in range(3000)])
    good_pq = tmp_path / "good.parquet"
    pq.write_table(table, good_pq, row_group_size=1000)
    data = bytearray(good_pq.read_bytes())
    meta = pq.ParquetFile(good_pq).metadata
    second = meta.row_group(1).column(0)
    start = second.dictionary_page_offset or second.data_page_offset
    data[start:start + 64] = b"\xff" * 64  # wreck the second row group's first column chunk
    bad_pq = tmp_path / "bad.parquet"
    bad_pq.write_bytes(bytes(data))
    records = list(iter_records(bad_pq))
    assert [r.value for r in records[:1000]] == table.to_pylist()[:1000]
    assert records[-1].error == "unreadable data" and records[-1].index == len(records) - 1


def test_rows_in_other_chat_shapes_point_to_prepare_data(tmp_path, capsys):
    sharegpt = {"id": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    openai = {"id": "o", "messages": GOOD["conversations"]}
    path = write_lines(tmp_path / "shapes.jsonl", [sharegpt, openai, {"id": "x", "conversations": []}])
    report = validate_files([path])
    assert report.invalid == 3 and report.warnings["invalid here, but prepare-data can normalize it"].count == 2
    assert run_command("validate-data", [str(path)]) == 1
    assert "hint: `draftsmith prepare-data --data-path FILE`" in capsys.readouterr().out


def test_leading_replies_are_a_warning_and_build_dataset_drops_them(tmp_path, capsys):
    """The leading-reply policy (#16.4) as validate-data reports it: the row is valid, its
    replies before the first user message are counted as a warning."""
    lead = with_messages({"role": "assistant", "content": "orphan"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"})
    path = write_lines(tmp_path / "lead.jsonl", [GOOD, {**lead, "id": "lead"}])
    report = validate_files([path])
    assert report.ok and report.rows == 2
    assert report.warnings["replies before the first user message (build-dataset drops them)"].examples == [
        f"{path}:2"]


def test_limit_flags_are_spelled_the_same_in_every_data_stage(tmp_path, capsys):
    from draftsmith import config
    from draftsmith.cli import build_parser

    for command, required in [("prepare-data", []), ("validate-data", ["f.jsonl"]),
                              ("build-dataset", ["--data-path", "d", "--target-model-path", "t"]),
                              ("regenerate-data", ["--target-model-path", "m", "--data-path", "d", "--output-dir", "o"])]:
        parser, module = build_parser(command)
        for argv, limits in [([], RowLimits()), (["--max-row-bytes", "100", "--max-row-depth", "7"], RowLimits(100, 7))]:
            assert config.from_args(module.CONFIG, parser.parse_args(required + argv)).limits == limits, command
    deep = write_lines(tmp_path / "deep.jsonl", [GOOD, {**GOOD, "id": "d", "meta": [[["x"]]]}])
    assert run_command("validate-data", [str(deep), "--max-row-depth", "3"]) == 1
    assert "nesting too deep" in capsys.readouterr().out
    assert run_command("validate-data", [str(deep), "--max-row-depth", "4"]) == 0
    assert run_command("validate-data", [str(deep), "--max-row-depth", "501"]) == 2
    assert "--max-row-depth must be between 1 and 500" in capsys.readouterr().err
