"""`draftsmith eval`: acceptance length, speedup and a lossless check by real speculative decoding.

The target is loaded with transformers, the draft from its exported folder (validated by
`draftsmith.export` first, so a folder that would serve garbage is refused here too).
Every turn is decoded twice, plainly and speculatively, interleaved so machine load hits
both alike; the outputs must be token-identical. MT-bench's second turn follows the
model's own first answer. Exit status 1 on any lossless mismatch.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from draftsmith import config
from draftsmith.config import option
from draftsmith.errors import DraftsmithError, InputError
from draftsmith.eval import benchmarks as bench
from draftsmith.eval.report import BenchmarkResult, TurnResult, benchmark_summary, markdown_table, write_report
from draftsmith.eval.spec_decode import SpecConfig, greedy_generate, speculative_generate
from draftsmith.target.dtype import CHOICES, choose_dtype, resolve_dtype
from draftsmith.target.loading import load_tokenizer
from draftsmith.target.prompting import encode_prompt, eos_ids, render_prompt


@dataclass(kw_only=True)
class EvalConfig:
    target_model_path: Path = option(help="HF target folder or hub name")
    draft_model_path: Path | None = option(None, help="exported draft folder (required with --backend hf)")
    benchmarks: list[str] = option(flag="--benchmark", metavar="NAME",
                                   help="mtbench | gsm8k | humaneval | FILE.jsonl (several allowed)")
    draft_depth: list[int] = option(default_factory=lambda: [5], metavar="K", deprecated=("--num-steps",),
                                    help="draft tokens per verify step (several values share the plain baseline)")
    topk: int = option(1, help="tree branching; 1 = chain drafting")
    num_draft_tokens: int | None = option(None, help="tree nodes verified per step + 1, as SGLang's flag "
                                                     "(default K*topk+1)")
    max_new_tokens: int = option(128, help="new tokens per turn")
    num_questions: int | None = option(None, deprecated=("--limit",),
                                       help="first M prompts of each benchmark (default: all)")
    output_file: Path = option(Path("report.json"), deprecated=("--output",),
                               help="report JSON; .md and .png are written beside it")
    metrics: Path | None = option(None, help="training metrics.jsonl to plot")
    device: str = option("cpu", help="cpu | cuda | cuda:N")
    dtype: str = option("auto", choices=CHOICES,
                        help="auto = float32, which keeps the lossless check exact (bf16 rounding differs between "
                             "batched and one-token forwards); bfloat16 | float16 for serving-dtype speed")
    backend: Literal["hf", "sglang"] = option("hf", help="hf: decode here; sglang: ask a running server")
    server_url: str | None = option(None, help="running SGLang server for --backend sglang")
    trust_remote_code: bool = option(False, help="allow the target's own modeling code (opt-in)")

    def validate(self) -> None:
        """What the flags must say together before any model is loaded."""
        if not self.benchmarks:
            raise InputError("give at least one benchmark", field="--benchmark")
        if self.backend == "sglang" and not self.server_url:
            raise InputError("--backend sglang needs --server-url", field="--server-url")
        if self.backend == "hf" and self.draft_model_path is None:
            raise InputError("--draft-model-path is required with --backend hf", field="--draft-model-path")
        if any(k < 0 for k in self.draft_depth):
            raise InputError(f"must be >= 0, got {self.draft_depth}", field="--draft-depth")
        for name in ("topk", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field="--" + name.replace("_", "-"))


CONFIG = EvalConfig


def load_models(cfg: EvalConfig):
    from draftsmith.draft.model import Eagle3Draft
    from draftsmith.export import check_folder, target_summary
    from draftsmith.target.loading import load_causal_lm

    dtype = resolve_dtype(cfg.dtype, cfg.device, "eval", what="target and draft", exact=True)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise DraftsmithError("--device cuda asked for, but CUDA is not available")
    tokenizer = load_tokenizer(cfg.target_model_path, cfg.trust_remote_code)
    model = load_causal_lm(cfg.target_model_path, dtype, cfg.trust_remote_code).to(cfg.device)
    if cfg.draft_model_path is None:
        return tokenizer, model, None
    report = check_folder(cfg.draft_model_path, model.config)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    report.raise_if_invalid()
    # a folder without aux ids is served with the engines' default layers: decode it with the same ones
    draft = Eagle3Draft.from_pretrained(cfg.draft_model_path, dtype=dtype,
                                        target_layers=target_summary(model.config)["num_hidden_layers"])
    draft = draft.to(cfg.device).eval()
    draft.load_embeddings(model.get_input_embeddings().weight)
    return tokenizer, model, draft


def evaluate(cfg: EvalConfig, tokenizer, model, draft, log=print) -> dict[str, Any]:
    """Decode every benchmark turn plainly and with each K; the report dict (see report.py)."""
    eos = eos_ids(tokenizer, model)
    aux_layers = list(draft.config.aux_layer_ids)
    spec_cfgs = [SpecConfig(num_steps=k, topk=cfg.topk, num_draft_tokens=cfg.num_draft_tokens,
                            max_new_tokens=cfg.max_new_tokens, eos_token_ids=eos) for k in cfg.draft_depth]
    warm = encode_prompt(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": "Hello"}]))
    greedy_generate(model, warm, 4, eos)
    speculative_generate(model, draft, warm, SpecConfig(num_steps=2, topk=cfg.topk, max_new_tokens=4), aux_layers)
    summaries, lossless = [], True
    for name in cfg.benchmarks:
        prompts = bench.load(name, cfg.num_questions)
        results = [BenchmarkResult(name, s.num_steps, s.topk, s.tree_size + 1 if s.num_steps else 1) for s in spec_cfgs]
        for p_index, prompt in enumerate(prompts):
            messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
            for turn, text in enumerate(prompt.turns):
                messages.append({"role": "user", "content": text})
                ids = encode_prompt(tokenizer, render_prompt(tokenizer, messages))
                plain = greedy_generate(model, ids, cfg.max_new_tokens, eos)
                for s, result in zip(spec_cfgs, results):
                    spec = speculative_generate(model, draft, ids, s, aux_layers)
                    result.turns.append(TurnResult(prompt.id, turn, len(ids), spec, plain))
                    if spec.tokens != plain.tokens:
                        log(f"LOSSLESS MISMATCH: {prompt.id} turn {turn} K={s.num_steps}")
                messages.append({"role": "assistant",
                                 "content": tokenizer.decode(plain.tokens, skip_special_tokens=True)})
            done = [benchmark_summary(r) for r in results]
            log(f"[{name} {p_index + 1}/{len(prompts)}] " +
                "  ".join(f"K={d['num_steps']}: tau {d['tau'] or 0:.2f} speedup {d['speedup'] or 0:.2f}" for d in done))
        for r in results:
            s = benchmark_summary(r)
            lossless &= bool(s["lossless"])
            summaries.append(s)
    return {"config": config_record(cfg), "benchmarks": summaries, "lossless": lossless}


def config_record(cfg: EvalConfig) -> dict[str, Any]:
    return {"target_model_path": str(cfg.target_model_path), "draft_model_path": str(cfg.draft_model_path),
            "benchmarks": cfg.benchmarks, "draft_depth": cfg.draft_depth, "topk": cfg.topk,
            "num_draft_tokens": cfg.num_draft_tokens, "max_new_tokens": cfg.max_new_tokens,
            "num_questions": cfg.num_questions,
            "device": cfg.device, "dtype": choose_dtype(cfg.dtype, cfg.device, exact=True).name,
            "backend": cfg.backend,
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def evaluate_sglang(cfg: EvalConfig, tokenizer, log=print) -> dict[str, Any]:
    """The same prompts sent to a running SGLang server; its acceptance length per benchmark."""
    from draftsmith.eval import sglang_client

    summaries = []
    for name in cfg.benchmarks:
        replies = []
        for prompt in bench.load(name, cfg.num_questions):
            messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
            for text in prompt.turns:
                messages.append({"role": "user", "content": text})
                reply = sglang_client.generate(cfg.server_url, render_prompt(tokenizer, messages), cfg.max_new_tokens)
                replies.append(reply)
                messages.append({"role": "assistant", "content": reply.text})
        summaries.append(sglang_client.served_summary(name, replies))
        log(f"[{name}] served tau_sglang {summaries[-1]['tau_sglang']}")
    return {"config": config_record(cfg), "benchmarks": summaries}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(EvalConfig, args)
    cfg.validate()
    for name in cfg.benchmarks:
        bench.load(name, 0)   # fail on a bad benchmark name before loading models
    if cfg.backend == "sglang":
        tokenizer = load_tokenizer(cfg.target_model_path, cfg.trust_remote_code)
        report = evaluate_sglang(cfg, tokenizer)
        from draftsmith.fsutil import write_json_atomic

        write_json_atomic(cfg.output_file, report)
        print(f"wrote {cfg.output_file}")
        return 0
    tokenizer, model, draft = load_models(cfg)
    report = evaluate(cfg, tokenizer, model, draft)
    paths = write_report(report, cfg.output_file, cfg.metrics)
    print(markdown_table(report["benchmarks"]), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if not report["lossless"]:
        print("error: speculative output differs from plain greedy decoding", file=sys.stderr)
        return 1
    return 0
