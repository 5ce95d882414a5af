"""regenerate-data: replies equal HF's own unbatched greedy generation, turn by turn; counts add up;
a crash mid-run resumes to the same file; other settings are refused; 2 torchrun ranks == 1 process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from draftsmith.data import regenerate as rg
from draftsmith.errors import DraftsmithError

MAX_NEW = 6


@pytest.fixture(scope="module")
def target(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama with one extra stop token: the 2nd token of its greedy reply to "Tell me a story."
    ends that reply after one token, so the conversation goes on to its second turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path_factory.mktemp("regen_target") / "m"
    shutil.copytree(tiny_llama_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me a story."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    reply = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=2)[0, ids.shape[1]:].tolist()
    assert reply[0] != reply[1]
    GenerationConfig(eos_token_id=[2, reply[1]], pad_token_id=2, bos_token_id=1).save_pretrained(out)
    return out


def reference_reply(model, tok, messages: list[dict]) -> tuple[str, bool]:
    """HF's own greedy generation for one prompt, alone (no padding), cut at the first stop token."""
    stops = set(model.generation_config.eos_token_id) | {tok.eos_token_id}
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=2,
                             eos_token_id=sorted(stops))[0, ids.shape[1]:].tolist()
    cut = next((i for i, t in enumerate(out) if t in stops), None)
    return tok.decode(out if cut is None else out[:cut], skip_special_tokens=True).strip(), cut is not None


def write_input(path: Path) -> Path:
    rows = [
        {"id": "two-turns", "conversations": [
            {"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once..."},
            {"role": "user", "content": "Shorter, please."}, {"role": "assistant", "content": "Done."}]},
        {"id": "system", "conversations": [
            {"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2? Explain."},
            {"role": "assistant", "content": "4"}]},
        {"id": "plain", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"id": "tool", "conversations": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                "name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]},
        {"id": "long", "conversations": [{"role": "user", "content": "word " * 300},
                                         {"role": "assistant", "content": "ok"}]},
        {"id": "text", "text": "already formatted"},
    ]
    lines = [json.dumps(r) for r in rows] + ['{"id": "broken", "conv']
    path.write_text("\n".join(lines) + "\n")
    return path


def config(model: Path, data: Path, out: Path, **kw) -> rg.RegenerateConfig:
    return rg.RegenerateConfig(target_model_path=str(model), data_path=[data], output_dir=out,
                               max_new_tokens=MAX_NEW, max_prompt_length=200, batch_size=2, device="cpu",
                               progress=False, **kw)


def read_rows(path: Path) -> dict[str, list[dict]]:
    return {r["id"]: r["conversations"] for r in map(json.loads, path.read_text().splitlines())}


def test_replies_are_the_targets_own_greedy_replies_turn_by_turn(target, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_input(tmp_path / "in.jsonl")
    summary = rg.regenerate(config(target, data, tmp_path / "out"))
    rows = read_rows(tmp_path / "out" / rg.OUTPUT)

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target).eval()
    first, stopped = reference_reply(model, tok, [{"role": "user", "content": "Tell me a story."}])
    assert stopped and first                      # one token, then the extra stop token
    history = [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": first},
               {"role": "user", "content": "Shorter, please."}]
    second, _ = reference_reply(model, tok, history)
    assert rows["two-turns"] == history + [{"role": "assistant", "content": second}]

    sys_msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2? Explain."}]
    assert rows["system"] == sys_msgs + [{"role": "assistant", "content": reference_reply(model, tok, sys_msgs)[0]}]
    hi = [{"role": "user", "content": "hi"}]
    assert rows["plain"] == hi + [{"role": "assistant", "content": reference_reply(model, tok, hi)[0]}]

    skipped = [json.loads(line) for line in (tmp_path / "out" / rg.SKIPPED).read_text().splitlines()]
    reasons = {s.get("id"): s["reason"] for s in skipped}
    assert reasons == {"tool": "tool calls are not regenerated",
                       "long": "prompt longer than --max-prompt-length 200 tokens",
                       "text": "pre-formatted text has no turns to answer", None: "invalid JSON"}
    assert next(s for s in skipped if s.get("id") == "text")["line"] == 6
    assert summary["read"] == 7 == summary["written"] + summary["skipped"]
    assert summary["written"] == 3 and summary["replies"] == 4
    assert not list((tmp_path / "out").glob("*.partial.*"))

    again = rg.regenerate(config(target, data, tmp_path / "out"))      # finished: nothing is redone
    assert again == summary
    with pytest.raises(DraftsmithError, match="max_new_tokens"):
        rg.regenerate(dataclasses.replace(config(target, data, tmp_path / "out"), max_new_tokens=9))


def test_a_crash_after_one_batch_resumes_to_the_same_file(target, tmp_path, monkeypatch):
    data = write_input(tmp_path / "in.jsonl")
    whole = rg.regenerate(config(target, data, tmp_path / "whole"))

    real = rg.Generator.generate

    def crash_on_second_batch(self, prompts, seed):
        if seed >= 1_000_003:                         # batch 1 (seed = batch * 1_000_003 + turn): the process dies
            raise KeyboardInterrupt
        return real(self, prompts, seed)

    monkeypatch.setattr(rg.Generator, "generate", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        rg.regenerate(config(target, data, tmp_path / "cut"))
    partial = tmp_path / "cut" / "regenerated.partial.rank0.jsonl"
    assert [json.loads(x).get("end_of_batch") for x in partial.read_text().splitlines()][-1] == 0
    with open(partial, "a") as f:                     # a torn line from the moment of the crash
        f.write('{"id": "two-tu')
    monkeypatch.setattr(rg.Generator, "generate", real)
    resumed = rg.regenerate(config(target, data, tmp_path / "cut"))
    for key in ("read", "written", "skipped", "replies", "reply_tokens", "replies_cut_at_max_new_tokens"):
        assert resumed[key] == whole[key]                 # the batches done before the crash count too
    for name in (rg.OUTPUT, rg.SKIPPED):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_strict_stops_at_the_first_input_row_that_would_be_skipped(tmp_path):
    from draftsmith.errors import StrictRowError

    data = write_input(tmp_path / "in.jsonl")
    skipped: list[dict] = []
    items = rg.read_items(config(Path("m"), data, tmp_path / "o"), skipped)
    first = skipped[0]
    with pytest.raises(StrictRowError, match=f"line {first['line']}, id 'tool': tool calls are not regenerated"):
        rg.read_items(config(Path("m"), data, tmp_path / "o", strict=True), [])
    assert first["id"] == "tool" and len(items) + len(skipped) == len(data.read_text().splitlines())


def test_torchrun_two_ranks_write_what_one_process_writes(target, tmp_path):
    data = write_input(tmp_path / "in.jsonl")
    rg.regenerate(config(target, data, tmp_path / "one"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "draftsmith.cli", "regenerate-data", "--model-path", str(target), "--data-path", str(data),
           "--output-dir", str(tmp_path / "two"), "--max-new-tokens", str(MAX_NEW), "--max-prompt-length", "200",
           "--batch-size", "2", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (rg.OUTPUT, rg.SKIPPED):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
