"""regenerate-data: the target writes the assistant replies of a conversations JSONL.

A draft learns to predict what the *target* says. Public datasets hold other models'
replies (ShareGPT's are ChatGPT's), so at serving time the draft faces text unlike its
training text; replacing every reply with the target's own greedy reply (the turns it
will really be asked to speed up) closes that gap. Each user turn is answered in order,
with the target's earlier replies as the history, the way a chat with it unfolds.

Input: canonical conversations (anything `validate-data` accepts; pre-formatted text
rows and rows with tool messages are skipped with a reason; with --strict the first such
row ends the run, exit 2). Output in `--output-dir`: `regenerated.jsonl` (canonical rows,
`id`s kept), `regenerate_skipped.jsonl` (line + reason) and `regenerate_summary.json` whose
counts add up: read == written + skipped.

Conversations are batched in order of prompt length (little left-padding). The run is
resumable: each finished batch is appended to `regenerated.partial.rank<R>.jsonl` and a rerun
with the same settings continues after the last complete batch. Under torchrun each rank
takes every world-size-th batch and rank 0 merges the parts in batch order, so the
output does not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from draftsmith import config, dist
from draftsmith.config import option
from draftsmith.data import rowerrors
from draftsmith.data.conversation import normalize_row
from draftsmith.data.formats import RowLimits, iter_records
from draftsmith.errors import DraftsmithError, StrictRowError
from draftsmith.fsutil import atomic_path, read_json_object, write_json_atomic
from draftsmith.target.dtype import CHOICES, DTYPE_HELP, check_dtype_name, resolve_dtype
from draftsmith.target.prompting import encode_prompt, eos_ids, render_prompt

OUTPUT = "regenerated.jsonl"
SKIPPED = "regenerate_skipped.jsonl"
SUMMARY = "regenerate_summary.json"
SETTINGS = "regenerate_settings.json"
COUNTS = ("replies", "reply_tokens", "replies_cut_at_max_new_tokens")   # per batch, kept in its end marker


@dataclass
class RegenerateConfig:
    """Every setting of regenerate-data: the one source of its flags, defaults, help and config
    files (draftsmith/config.py); values are checked on construction."""

    target_model_path: str = option(help="target model: HF folder or hub name", aliases=("--model-path",),
                                    metavar="PATH")
    data_path: list[Path] = option(help="conversations JSONL/JSON/parquet", metavar="FILE")
    output_dir: Path = option(help="folder for regenerated.jsonl and its summary", deprecated=("--output-path",),
                              metavar="DIR")
    max_new_tokens: int = option(512, help="tokens per reply")
    max_prompt_length: int = option(1536, help="tokens; a turn whose prompt is longer ends its conversation there")
    max_turns: int | None = option(None, help="answer at most N user turns per conversation (default: all)")
    num_samples: int | None = option(None, help="only the first N usable conversations")
    batch_size: int = option(16, help="conversations per generate call")
    temperature: float = option(0.0, help="0 = greedy, as speculative decoding is usually served and evaluated")
    top_p: float = option(1.0, help="nucleus sampling (with --temperature > 0)")
    seed: int = option(0, help="seed of sampling (with --temperature > 0)")
    dtype: str = option("auto", choices=CHOICES, help=DTYPE_HELP)
    device: str | None = option(None, help="cpu, cuda or auto (default: CUDA when present)")
    trust_remote_code: bool = option(False, help="allow the model's own Python code")
    progress: bool = option(True, help="progress bar")
    strict: bool = option(False, help="stop at the first input row that would be skipped (unreadable, not a "
                                      "conversation, tool messages): print why, exit 2")
    limits: RowLimits = field(default_factory=RowLimits)

    def __post_init__(self):
        for name in ("max_new_tokens", "max_prompt_length", "batch_size"):
            if getattr(self, name) < 1:
                raise DraftsmithError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_turns is not None and self.max_turns < 1:
            raise DraftsmithError(f"--max-turns must be >= 1, got {self.max_turns}")
        if self.num_samples is not None and self.num_samples < 1:
            raise DraftsmithError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.temperature < 0:
            raise DraftsmithError(f"--temperature must be >= 0, got {self.temperature}")
        check_dtype_name(self.dtype)

    def settings(self) -> dict:
        """What decides the output: a rerun with other values must not continue an old partial file.
        (Keys as earlier releases wrote them, `model_path` and flat limits, so their partial runs resume.)"""
        keep = ("max_new_tokens", "max_prompt_length", "max_turns", "num_samples", "batch_size",
                "temperature", "top_p", "seed", "dtype")
        record = {"model_path": self.target_model_path, **{k: getattr(self, k) for k in keep},
                  "max_row_bytes": self.limits.max_row_bytes, "max_row_depth": self.limits.max_row_depth}
        record["data_path"] = [str(p) for p in self.data_path]
        return record


CONFIG = RegenerateConfig


@dataclass
class Item:
    """One usable conversation: its place in the input, and the turns to answer."""

    order: int
    row_id: str
    system: list[dict]
    users: list[str]
    where: dict
    first_prompt_tokens: int = 0


def read_items(cfg: RegenerateConfig, skipped: list[dict]) -> list[Item]:
    """Usable conversations in input order; every other row goes to `skipped` with its position
    (reasons: rowerrors.TABLE; rows are read with the limits and Unicode policy of every data stage,
    and normalized as prepare-data does: replies before the first user message are dropped).
    With `cfg.strict` the first such row raises StrictRowError instead."""
    items: list[Item] = []
    skip = _strict_skip(cfg, skipped)
    for path in cfg.data_path:
        for rec in iter_records(path, limits=cfg.limits):
            where = {"source": rec.source, **rec.position()}
            if rec.error:
                skip(rec.skip_entry())
                continue
            try:
                norm = normalize_row(rec.value)
            except Exception as e:  # the safety net (never expected: tests/test_fuzz_rows.py asserts it)
                skip({**where, "id": _row_id(rec.value), **rowerrors.internal_error(e)})
                continue
            if norm.kind == "preformatted" or norm.row is None:
                reason = rowerrors.NO_TURNS if norm.kind == "preformatted" else norm.problem.reason
                skip({**where, "id": _row_id(rec.value), "reason": reason})
                continue
            messages = norm.row["conversations"]
            if any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
                skip({**where, "id": norm.row["id"], "reason": rowerrors.TOOL_CALLS_NOT_REGENERATED})
                continue
            users = [m["content"] for m in messages if m["role"] == "user"][: cfg.max_turns]
            system = [{"role": "system", "content": m["content"]} for m in messages if m["role"] == "system"]
            items.append(Item(len(items), norm.row["id"], system, users, where))
            if cfg.num_samples is not None and len(items) >= cfg.num_samples:
                return items
    return items


def _strict_skip(cfg: RegenerateConfig, skipped: list[dict]):
    """`skipped.append`, or with --strict a StrictRowError naming the row."""
    def skip(entry: dict) -> None:
        if cfg.strict:
            raise StrictRowError(rowerrors.describe(entry))
        skipped.append(entry)
    return skip


def _row_id(value: object) -> str | None:
    row_id = value.get("id") if isinstance(value, dict) else None
    return row_id if isinstance(row_id, str) else None


class Generator:
    """Batched left-padded generation with the target, with the stop tokens serving uses."""

    def __init__(self, cfg: RegenerateConfig, device: torch.device):
        from draftsmith.target.loading import load_causal_lm, load_tokenizer

        dtype = resolve_dtype(cfg.dtype, device, "regenerate-data")
        try:
            path, trust = cfg.target_model_path, cfg.trust_remote_code
            self.tokenizer = load_tokenizer(path, trust)
            self.model = load_causal_lm(path, dtype, trust)
        except AttributeError as e:
            raise DraftsmithError(f"cannot load target model {cfg.target_model_path}: {e}") from None
        self.model = self.model.to(device).eval()
        self.device = device
        self.cfg = cfg
        self.eos = eos_ids(self.tokenizer, self.model)
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else (self.eos[0] if self.eos else 0)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return encode_prompt(self.tokenizer, render_prompt(self.tokenizer, messages))

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], seed: int) -> list[tuple[list[int], bool]]:
        """(reply ids without the stop token, stopped by a stop token) for each prompt."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        sample = self.cfg.temperature > 0
        kwargs = dict(do_sample=sample, temperature=self.cfg.temperature, top_p=self.cfg.top_p) if sample else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  max_new_tokens=self.cfg.max_new_tokens, eos_token_id=list(self.eos) or None,
                                  pad_token_id=self.pad, **kwargs)
        replies = []
        for row in out[:, width:].tolist():
            stop = next((i for i, t in enumerate(row) if t in self.eos), None)
            replies.append((row if stop is None else row[:stop], stop is not None))
        return replies


Answer = tuple[Item, "list[dict] | None", str]   # the item, its regenerated conversation (None: skipped), why


def answer_batch(gen: Generator, batch: list[Item], seed: int) -> tuple[list[Answer], dict]:
    """Answer the batch's user turns in order: (item, conversation or None, skip reason) per item, and
    the batch's reply counts."""
    counts = dict.fromkeys(COUNTS, 0)
    histories = [list(it.system) for it in batch]
    open_ = list(range(len(batch)))
    reasons = [""] * len(batch)
    for turn in range(max(len(it.users) for it in batch)):
        asking, prompts = [], []
        for i in open_:
            if turn >= len(batch[i].users):
                continue
            ids = gen.prompt_ids(histories[i] + [{"role": "user", "content": batch[i].users[turn]}])
            if len(ids) > gen.cfg.max_prompt_length:
                reasons[i] = f"prompt longer than --max-prompt-length {gen.cfg.max_prompt_length} tokens"
                continue
            asking.append(i)
            prompts.append(ids)
        if not asking:
            break
        open_ = []
        for i, (reply, stopped) in zip(asking, gen.generate(prompts, seed * 1_000_003 + turn)):
            text = gen.tokenizer.decode(reply, skip_special_tokens=True).strip()
            counts["replies"] += 1
            counts["reply_tokens"] += len(reply)
            counts["replies_cut_at_max_new_tokens"] += int(not stopped)
            if not text:
                reasons[i] = "the target's reply is empty"
                continue
            histories[i] += [{"role": "user", "content": batch[i].users[turn]}, {"role": "assistant", "content": text}]
            if stopped:      # a reply cut by --max-new-tokens ends the conversation: the next turn would be unreal
                open_.append(i)
    results = []
    for i, it in enumerate(batch):
        has_reply = any(m["role"] == "assistant" for m in histories[i])
        results.append((it, histories[i] if has_reply else None, "" if has_reply else reasons[i] or "no reply"))
    return results, counts


def _done_batches(partial: Path) -> dict[int, tuple[list[str], dict]]:
    """(row lines, reply counts) of the complete batches in a partial file, by batch index; rows after
    the last end-of-batch marker (a batch cut short, a torn last line) are dropped."""
    done: dict[int, tuple[list[str], dict]] = {}
    if not partial.exists():
        return done
    pending: list[str] = []
    with open(partial, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            rec = json.loads(line)
            if rec.get("end_of_batch") is not None:
                done[rec["end_of_batch"]] = (pending, rec["counts"])
                pending = []
            else:
                pending.append(line)
    return done


def _batch_end(b: int, counts: dict) -> str:
    return json.dumps({"end_of_batch": b, "counts": counts}) + "\n"


def _partial(out: Path, rank: int) -> Path:
    return out / f"regenerated.partial.rank{rank}.jsonl"


def regenerate(cfg: RegenerateConfig) -> dict:
    info = dist.init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_path, settings = out / SETTINGS, cfg.settings()
    if info.is_main:
        old = read_json_object(settings_path) if settings_path.exists() else settings
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise DraftsmithError(f"{out} holds a regeneration with other settings ({', '.join(changed)}): "
                                  "choose another --output-dir or delete it")
        write_json_atomic(settings_path, settings)
    dist.barrier()
    if (out / SUMMARY).exists() and (out / OUTPUT).exists():
        summary = read_json_object(out / SUMMARY)
        if info.is_main:
            print(f"regenerate-data: {out / OUTPUT} is complete ({summary['written']} conversations)")
        return summary

    started = time.time()
    skipped: list[dict] = []
    items = read_items(cfg, skipped)
    gen = Generator(cfg, info.device)
    for it in items:
        it.first_prompt_tokens = len(gen.prompt_ids(it.system + [{"role": "user", "content": it.users[0]}]))
    by_length = sorted(items, key=lambda it: (it.first_prompt_tokens, it.order))
    batches = [by_length[i:i + cfg.batch_size] for i in range(0, len(by_length), cfg.batch_size)]
    mine = [b for b in range(len(batches)) if b % info.world_size == info.rank]

    partial = _partial(out, info.rank)
    done = _done_batches(partial)
    _rewrite(partial, done)   # drop a torn tail so appends continue cleanly
    todo = [b for b in mine if b not in done]
    tokens_this_run = 0
    bar = None
    if cfg.progress and info.is_main:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(batches[b]) for b in mine), initial=sum(len(batches[b]) for b in mine if b in done),
                   unit="conv", desc="regenerate-data", mininterval=1.0)
    with open(partial, "a", encoding="utf-8") as f:
        for b in todo:
            lines = []
            answers, counts = answer_batch(gen, batches[b], cfg.seed + b)
            for it, conv, reason in answers:
                rec = {"id": it.row_id, "conversations": conv} if conv else {**it.where, "id": it.row_id,
                                                                              "skip": reason}
                lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            f.write("".join(lines) + _batch_end(b, counts))
            tokens_this_run += counts["reply_tokens"]
            f.flush()
            os.fsync(f.fileno())
            if bar:
                bar.update(len(batches[b]))
    if bar:
        bar.close()
    tokens_this_run = sum(dist.all_gather_objects(tokens_this_run))
    dist.barrier()
    if not info.is_main:
        dist.cleanup()
        return {}

    written = 0
    total = Counter(dict.fromkeys(COUNTS, 0))
    with atomic_path(out / OUTPUT) as tmp, open(tmp, "w", encoding="utf-8") as f:
        parts = {r: _done_batches(_partial(out, r)) for r in range(info.world_size)}
        for b in range(len(batches)):
            lines, counts = parts[b % info.world_size][b]
            total.update(counts)
            for line in lines:
                rec = json.loads(line)
                if "skip" in rec:
                    rec["reason"] = rec.pop("skip")
                    skipped.append(rec)
                else:
                    f.write(line)
                    written += 1
    with atomic_path(out / SKIPPED) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for s in skipped:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    reasons = dict(Counter(s["reason"] for s in skipped))
    summary = {"output": str(out / OUTPUT), "read": written + len(skipped), "written": written,
               "skipped": len(skipped), "skipped_by_reason": reasons, **{k: total[k] for k in COUNTS},
               "seconds": round(time.time() - started, 1), "settings": settings}
    summary["reply_tokens_per_s_this_run"] = round(tokens_this_run / max(summary["seconds"], 1e-9), 1)
    write_json_atomic(out / SUMMARY, summary)
    for r in range(info.world_size):
        _partial(out, r).unlink(missing_ok=True)
    dist.cleanup()
    return summary


def _rewrite(partial: Path, done: dict[int, tuple[list[str], dict]]) -> None:
    """Keep only complete batches in the partial file (atomically), so appends continue cleanly."""
    with atomic_path(partial) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for b, (lines, counts) in done.items():
            f.write("".join(lines) + _batch_end(b, counts))


def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p, RegenerateConfig)


def run(args: argparse.Namespace) -> int:
    summary = regenerate(config.from_args(RegenerateConfig, args))
    if summary:
        print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2))
    return 0
