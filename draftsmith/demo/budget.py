"""`draftsmith demo --budget MINUTES`: size the demo's data and epochs to a time budget on this machine.

Three parts:

- `measure_sample(...)` runs the demo's own stages on a sample of the data (prepare-data,
  build-dataset, hidden-states, one epoch of train): tokens per conversation, the share kept,
  and the hidden-states and training throughput as the stages really run (batching by padded
  width, the feature codec, disk, data loading; a synthetic forward on random tokens ran 18 %
  faster than the hidden-states stage here, so the plan overran); `calibrate(...)` measures
  plain greedy decoding (new tokens/s) and one speculative verify step (seconds) on a few short
  runs, plus the time to load the target (paid once per stage);
- `plan_budget(...)` is pure arithmetic on those throughputs and the data's shape (tokens per
  conversation, the share of conversations the dataset keeps, measured by the demo's own
  prepare-data + build-dataset on a sample): the eval's cost is fixed (questions × 2 turns ×
  max new tokens, plain decoding plus speculative decoding at τ = 1, an upper bound), and the
  rest buys conversations (hidden states once, training once per epoch); of the conversation ×
  epoch mixes that fit (1 to `MAX_EPOCHS` epochs), it takes the one the fit expects the highest τ of;
- `TAU_FIT`: τ = a + b·log2(supervised tokens × epochs^γ), the least-squares fit of the measured
  τ-per-budget curve (bench/tau_curve.py, docs/benchmarks.md "τ per training budget"), which
  says what τ the chosen size is expected to reach and what a 2× budget would give; γ says
  what a repeated epoch is worth against as many fresh tokens (1: as much, 0: nothing), from the
  curve's points at equal tokens with 1, 2 and 4 epochs.

The plan never promises more than the fit's range: outside the measured token range the
expected τ is marked as an extrapolation.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from draftsmith.errors import InputError

MAX_EPOCHS = 4          # more passes over the same conversations are not in the measured curve
# The share of the budget a plan fills: the sample's few minutes can run faster than the sustained run (a
# shared or burstable CPU). Timed `--budget 40` runs took 0.97x (AVX2 EPYC) and 1.14x (AVX512-BF16 EPYC: its
# 52-step sample trained at 0.44 s/step, the run and fresh reruns of that sample at 0.55) of their plans
# (docs/benchmarks.md 6.2); planning 88 % of the budget keeps both inside it.
PLANNED_SHARE = 0.88
MIN_SAMPLES = 8         # fewer conversations than this do not train a draft worth evaluating


@dataclass(frozen=True)
class TauFit:
    """τ = a + b·log2(supervised training tokens × epochs^gamma), fitted on trained tokens (supervised ×
    epochs) in [lo_tokens, hi_tokens], for one target (`model`, its folder name) trained on the dataset's
    own replies (not regenerated). gamma: a repeated epoch's worth against fresh tokens (1: the same)."""

    a: float
    b: float
    lo_tokens: int
    hi_tokens: int
    source: str
    model: str = "SmolLM2-135M-Instruct"
    gamma: float = 1.0

    def applies(self, model: str, regenerated: bool) -> bool:
        """Whether the fit was measured on this target and kind of replies (it does not transfer)."""
        return model == self.model and not regenerated

    def predict(self, supervised: float, epochs: int = 1) -> float:
        return self.a + self.b * (math.log2(max(supervised, 1.0)) + self.gamma * math.log2(max(epochs, 1)))

    def measured(self, supervised: float, epochs: int = 1) -> bool:
        return self.lo_tokens <= supervised * epochs <= self.hi_tokens


# The proxy-τ fit of bench/results/tau_curve_sharegpt.json (SmolLM2-135M-Instruct, ShareGPT replies, the demo's
# hyper-parameters; the nested subsets at 1, 2 and 4 epochs and the earlier demo drafts up to 610k trained tokens;
# real decoding measured within ±0.03 of the proxy, docs/benchmarks.md §6.2): τ = a + b·(log2 supervised tokens +
# gamma·log2 epochs). tests/test_demo_budget.py checks these against that file. Another target or data: the fit
# does not transfer; rerun bench/tau_curve.py.
TAU_FIT = TauFit(a=0.5429, b=0.04400, lo_tokens=2657, hi_tokens=610252, gamma=0.632,
                 source="bench/results/tau_curve_sharegpt.json#proxy_tau_epochs")


@dataclass(frozen=True)
class Throughput:
    """This machine's speed at each stage's work (calibrate)."""

    hidden_states_tok_s: float     # target forward with the aux hidden states
    train_tok_s: float             # draft TTT forward + backward + optimizer step
    plain_tok_s: float             # plain greedy decoding, new tokens/s
    spec_step_s: float             # one speculative verify step (K draft forwards + one target verify)
    load_s: float = 0.0            # loading the target once (every model stage pays it)


@dataclass(frozen=True)
class DataShape:
    """The data as the demo's own prepare-data + build-dataset see it (a measured sample)."""

    tokens_per_sample: float       # mean tokens of a kept conversation (after --max-length)
    supervised_per_sample: float   # mean supervised (reply) tokens of a kept conversation
    kept_ratio: float              # kept conversations / conversations asked for
    available: int | None = None   # conversations the source has (None: more than any budget uses)
    kept_prefix: tuple[int, ...] = ()   # kept among the first n+1 conversations asked for, per n (measured)

    def asked_for(self, kept: int) -> int:
        """Conversations to ask prepare-data for (it takes the first --num-samples rows) so that
        build-dataset keeps `kept`: exact within the measured prefix, whose skips are not spread evenly
        (the packaged ShareGPT's first 256 rows keep 83 %, its first 500 89 %), then at the prefix's ratio."""
        if self.kept_prefix and kept <= self.kept_prefix[-1]:
            return bisect.bisect_left(self.kept_prefix, kept) + 1
        done, have = (len(self.kept_prefix), self.kept_prefix[-1]) if self.kept_prefix else (0, 0)
        return done + math.ceil((kept - have) / self.kept_ratio)

    def kept_among(self, asked: int) -> int:
        """Conversations build-dataset keeps of the first `asked` (the inverse of `asked_for`)."""
        if self.kept_prefix and asked <= len(self.kept_prefix):
            return self.kept_prefix[asked - 1] if asked > 0 else 0
        done, have = (len(self.kept_prefix), self.kept_prefix[-1]) if self.kept_prefix else (0, 0)
        return have + int((asked - done) * self.kept_ratio)


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float
    num_samples: int               # conversations asked of prepare-data (the demo's --num-samples)
    conversations: int             # of them, expected kept by build-dataset
    num_epochs: int
    trained_tokens: int            # supervised tokens × epochs
    seconds: dict[str, float] = field(default_factory=dict)   # planned seconds per stage
    expected_tau: float = 0.0
    extrapolated: bool = False     # the trained tokens lie outside the fit's measured range

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def eval_seconds(tp: Throughput, num_questions: int, max_new_tokens: int) -> float:
    """Upper bound of the eval stage: every turn to max_new_tokens, plain + speculative at τ = 1."""
    tokens = 2 * num_questions * max_new_tokens            # MT-bench: two turns per question
    return tokens / tp.plain_tok_s + tokens * tp.spec_step_s


def plan_budget(budget_s: float, tp: Throughput, shape: DataShape, *, num_questions: int, max_new_tokens: int,
                regenerate: int = 0, spent_s: float = 0.0, fit: TauFit = TAU_FIT,
                model_stages: int = 4, share: float = 1.0) -> BudgetPlan:
    """The conversations × epochs whose planned stage times fit in share × budget_s - spent_s, for the highest τ.

    Fixed costs first: the eval, and `model_stages` target loads (regenerate-data, hidden-states,
    train, eval). Each kept conversation then costs its hidden states, one training pass per epoch
    (and, with `regenerate`, its reply generated at the plain decoding speed). Of the mixes that fit
    (as many conversations as fit at E epochs, E = 1..MAX_EPOCHS), the one `fit` expects the highest
    τ of."""
    fixed = {"eval": eval_seconds(tp, num_questions, max_new_tokens), "model loads": model_stages * tp.load_s,
             "calibration": spent_s}
    avail = share * budget_s - sum(fixed.values())
    hs_s = shape.tokens_per_sample / tp.hidden_states_tok_s
    train_s = shape.tokens_per_sample / tp.train_tok_s
    regen_s = regenerate / tp.plain_tok_s if regenerate else 0.0
    kept_max = shape.kept_among(shape.available) if shape.available is not None else None

    def kept_at(epochs: int) -> int:          # conversations that fit with this many epochs each
        kept = int(avail // (hs_s + regen_s + epochs * train_s)) if avail > 0 else 0
        return kept if kept_max is None else min(kept, kept_max)

    if kept_at(1) < MIN_SAMPLES:
        per_sample = hs_s + regen_s + train_s
        need = sum(fixed.values()) + MIN_SAMPLES * per_sample
        raise InputError(f"--budget {budget_s / 60:.1f} min is too small on this machine: the eval alone takes "
                         f"{fixed['eval'] / 60:.1f} min and {MIN_SAMPLES} conversations "
                         f"{MIN_SAMPLES * per_sample / 60:.1f} min more (at least {math.ceil(need / 60)} min; "
                         f"or fewer --num-questions / --max-new-tokens)", field="--budget")
    # every mix that fits, the highest expected τ first (ties: fewer epochs)
    options = [(kept_at(e), e) for e in range(1, MAX_EPOCHS + 1) if kept_at(e) >= MIN_SAMPLES]
    kept, epochs = max(options, key=lambda o: (round(fit.predict(o[0] * shape.supervised_per_sample, o[1]), 9),
                                               -o[1]))
    supervised = kept * shape.supervised_per_sample
    seconds = {**({"regenerate-data": kept * regen_s} if regenerate else {}), "hidden-states": kept * hs_s,
               "train": kept * epochs * train_s, **fixed}
    asked = shape.asked_for(kept)
    return BudgetPlan(budget_s=budget_s, num_samples=asked if shape.available is None else min(shape.available, asked),
                      conversations=kept, num_epochs=epochs, trained_tokens=int(supervised * epochs), seconds=seconds,
                      expected_tau=fit.predict(supervised, epochs), extrapolated=not fit.measured(supervised, epochs))


def describe(plan: BudgetPlan, bigger: BudgetPlan | None, fit: TauFit = TAU_FIT) -> str:
    """Two sentences for the demo's log and report: the chosen size, its expected τ, and 2× the budget."""
    mark = " (extrapolated beyond the measured curve)" if plan.extrapolated else ""
    text = (f"--budget {plan.budget_s / 60:.0f} min on this machine: {plan.num_samples} conversations "
            f"(~{plan.conversations} kept) x {plan.num_epochs} epoch(s), {plan.trained_tokens:,} supervised tokens, "
            f"planned {plan.total_s / 60:.1f} min (to leave room for slower sustained speeds); "
            f"expected tau {plan.expected_tau:.2f}{mark} "
            f"(tau = {fit.a:.3f} + {fit.b:.3f} log2(tokens x epochs^{fit.gamma:.2f}), {fit.source}).")
    if bigger is not None:
        mark2 = " (extrapolated)" if bigger.extrapolated else ""
        text += (f" A {bigger.budget_s / 60:.0f} min budget would train {bigger.trained_tokens:,} tokens "
                 f"({bigger.num_samples} conversations x {bigger.num_epochs}) for an expected tau "
                 f"{bigger.expected_tau:.2f}{mark2}.")
    return text


# ----- calibration ----------------------------------------------------------------------------------

def _timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def calibrate(model_path: str, *, device: str = "cpu", dtype: str | None = None, seq_len: int = 256,
              draft_vocab_size: int = 4096, draft_depth: int = 5) -> Throughput:
    """Measure this machine's decoding speed (plain greedy, one speculative verify step) and the target's
    load time with a few short runs (seconds). The stage throughputs come from measure_sample."""
    import torch

    from draftsmith.draft.config import Eagle3Config
    from draftsmith.draft.model import Eagle3Draft
    from draftsmith.eval.spec_decode import SpecConfig, greedy_generate, speculative_generate
    from draftsmith.target.hf import load_target

    t0 = time.perf_counter()
    target = load_target(model_path, dtype=dtype or "auto", device=device, stage="demo --budget")
    load_s = time.perf_counter() - t0
    model, layers = target.model, list(target.aux_layers)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, seq_len), generator=g).to(target.device)
    vd = min(draft_vocab_size, vocab)
    dcfg = Eagle3Config.from_target_config(model.config, draft_vocab_size=vd, aux_layer_ids=layers)
    torch.manual_seed(0)
    draft = Eagle3Draft(dcfg).to(target.device)
    d2t = torch.zeros(vd, dtype=torch.long)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[:vd] = True
    draft.set_vocab_mapping(d2t.to(target.device), t2d.to(target.device))
    draft.load_embeddings(model.get_input_embeddings().weight.detach().float())
    draft.eval()
    prompt = ids[0, :32].tolist()
    new = 16
    plain = greedy_generate(model, prompt, new, ())
    plain = greedy_generate(model, prompt, new, ())
    spec_cfg = SpecConfig(num_steps=draft_depth, max_new_tokens=new)
    with torch.inference_mode():
        spec = speculative_generate(model, draft, prompt, spec_cfg, layers)
        spec = speculative_generate(model, draft, prompt, spec_cfg, layers)
    target.close()
    return Throughput(hidden_states_tok_s=0.0, train_tok_s=0.0, plain_tok_s=len(plain.tokens) / plain.seconds,
                      spec_step_s=spec.seconds / max(1, len(spec.emitted) + 1), load_s=load_s)


# ----- the demo's use ---------------------------------------------------------------------------------

SHAPE_CONVERSATIONS = 1024    # conversations the data shape is measured on (prepare-data + build-dataset: seconds)
SAMPLE_CONVERSATIONS = 64     # of those asked again, the ones timed through hidden-states and one training epoch
PLAN_FILE = "budget_plan.json"


def kept_prefix(skipped_file: Path, asked: int) -> tuple[int, ...]:
    """Per n < asked, the conversations build-dataset kept of the first n+1 lines of its input, from
    the (1-based) `line` of each row in its skipped.jsonl."""
    skipped = set()
    if skipped_file.exists():
        for text in skipped_file.read_text(encoding="utf-8").splitlines():
            if text.strip():
                skipped.add(json.loads(text).get("line"))
    out, kept = [], 0
    for line in range(1, asked + 1):
        kept += line not in skipped
        out.append(kept)
    return tuple(out)


def measure_sample(cfg, run_dir) -> tuple[DataShape, str, dict[str, float]]:
    """The demo's own stages on samples of the data, in run_dir. prepare-data + build-dataset on
    SHAPE_CONVERSATIONS conversations: tokens per conversation and which of them are kept (the plan asks
    for exactly as many as keep its count: 256 rows' average share, 83 %, once left a run keeping 88 %). Then SAMPLE_CONVERSATIONS of them through
    prepare-data, build-dataset, hidden-states and one training epoch, timed: tokens/s of each stage as
    it really runs, its fixed costs included (an overestimate of the per-conversation cost, so the plan
    errs on the short side). Returns the shape, the target's path and {"hidden_states_tok_s",
    "train_tok_s"}."""
    from dataclasses import replace

    from draftsmith.demo.pipeline import (stage_build_dataset, stage_hidden_states, stage_model, stage_prepare_data,
                                          stage_train)
    from draftsmith.demo.runner import StageContext

    def built(n: int, folder) -> StageContext:
        ctx = StageContext(replace(cfg, num_samples=n, num_epochs=1), folder, {}, False)
        ctx.results["model"] = stage_model(ctx)
        ctx.results["regenerate-data"] = {"train_jsonl": stage_prepare_data(ctx)["train_jsonl"]}
        ctx.results["build-dataset"] = stage_build_dataset(ctx)
        return ctx

    b = built(SHAPE_CONVERSATIONS, run_dir / "shape").results["build-dataset"]
    rows, rows_in = max(1, b["rows"]), b["rows"] + b["skipped"]    # rows_in < asked: the source ran out
    shape = DataShape(tokens_per_sample=b["tokens"] / rows, supervised_per_sample=b["supervised_tokens"] / rows,
                      kept_ratio=b["rows"] / max(1, rows_in),
                      available=rows_in if rows_in < SHAPE_CONVERSATIONS else None,
                      kept_prefix=kept_prefix(Path(b["dataset"]) / "skipped.jsonl", rows_in))
    ctx = built(SAMPLE_CONVERSATIONS, run_dir)
    tokens = ctx.results["build-dataset"]["tokens"]
    timed = {}
    for name, stage in (("hidden-states", stage_hidden_states), ("train", stage_train)):
        t0 = time.perf_counter()
        ctx.results[name] = stage(ctx)
        timed[name] = time.perf_counter() - t0
    return shape, ctx.results["model"]["model_path"], {"hidden_states_tok_s": tokens / timed["hidden-states"],
                                                       "train_tok_s": tokens / timed["train"]}


def apply_budget(cfg, run_dir, given: set[str]):
    """The demo config sized to cfg.budget minutes (num_samples, num_epochs) and the plan's description.

    The plan is kept in <run_dir>/budget_plan.json: rerunning the same command (to resume) reuses it
    instead of measuring again, so the stage keys, and the finished stages, stay the same."""
    import json
    from dataclasses import asdict, replace
    from pathlib import Path

    from draftsmith.fsutil import write_json_atomic

    clash = sorted(given & {"num_samples", "num_epochs"})
    if clash:
        raise InputError(f"--budget sizes {' and '.join('--' + c.replace('_', '-') for c in clash)} itself; "
                         f"give one or the other", field="--budget")
    run_dir = Path(run_dir)
    path = run_dir / PLAN_FILE
    request = {k: v for k, v in asdict(cfg).items() if k not in ("num_samples", "num_epochs", "overwrite")}
    request = json.loads(json.dumps(request, default=str))
    if path.exists() and not cfg.overwrite:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("request") == request:
            print(f"  --budget: the plan made earlier for this run folder ({path})", flush=True)
            return replace(cfg, num_samples=saved["num_samples"], num_epochs=saved["num_epochs"]), saved["text"]
    started = time.perf_counter()
    print(f"  --budget {cfg.budget:g} min: measuring this machine ({SHAPE_CONVERSATIONS} conversations tokenized, "
          f"{SAMPLE_CONVERSATIONS} through hidden-states and a training epoch, then a few decoding steps)", flush=True)
    shape, model_path, stages = measure_sample(cfg, run_dir / "budget")
    tp = replace(calibrate(model_path, device=cfg.device, dtype=cfg.dtype, draft_vocab_size=cfg.draft_vocab_size,
                           draft_depth=cfg.draft_depth), **stages)
    spent = time.perf_counter() - started
    print(f"  measured in {spent:.0f} s: hidden states {tp.hidden_states_tok_s:.0f} tok/s, training "
          f"{tp.train_tok_s:.0f} tok/s, plain decoding {tp.plain_tok_s:.1f} tok/s, a verify step "
          f"{tp.spec_step_s:.2f} s, target load {tp.load_s:.1f} s; {shape.tokens_per_sample:.0f} tokens "
          f"({shape.supervised_per_sample:.0f} supervised) per kept conversation, {shape.kept_ratio:.0%} kept",
          flush=True)
    kwargs = dict(num_questions=cfg.num_questions, max_new_tokens=cfg.max_new_tokens, regenerate=cfg.regenerate,
                  share=PLANNED_SHARE)
    plan = plan_budget(cfg.budget * 60.0, tp, shape, spent_s=spent, **kwargs)
    bigger = plan_budget(2 * cfg.budget * 60.0, tp, shape, spent_s=spent, **kwargs)
    text = describe(plan, bigger)
    write_json_atomic(path, {"request": request, "num_samples": plan.num_samples, "num_epochs": plan.num_epochs,
                             "text": text, "throughput": asdict(tp), "shape": asdict(shape),
                             "plan": {**asdict(plan), "total_s": plan.total_s},
                             "twice_the_budget": {**asdict(bigger), "total_s": bigger.total_s},
                             "fit": asdict(TAU_FIT)})
    print(f"  {text}", flush=True)
    return replace(cfg, num_samples=plan.num_samples, num_epochs=plan.num_epochs), text


def add_to_report(folder, run_dir, text: str, stage_seconds: dict[str, float]) -> str:
    """The plan's sentences and how the run kept to it, in the demo report (demo_report.md, and
    demo_report.json's "budget" and "budget_check": planned against measured seconds per stage).
    Returns the sentence on how the run kept to the plan."""
    import json
    from pathlib import Path

    from draftsmith.fsutil import write_json_atomic, write_text_atomic

    folder = Path(folder)
    planned = json.loads((Path(run_dir) / PLAN_FILE).read_text(encoding="utf-8"))["plan"]
    took = {"calibration": planned["seconds"]["calibration"], **stage_seconds}
    check = {stage: {"planned_s": round(planned["seconds"].get(stage, 0.0), 1), "took_s": round(took.get(stage, 0.0), 1)}
             for stage in ("calibration", "regenerate-data", "hidden-states", "train", "eval")
             if stage in took and stage in planned["seconds"]}       # regenerate-data: planned only with --regenerate
    total = sum(took.values())
    kept = (f"Planned {planned['total_s'] / 60:.1f} min of a {planned['budget_s'] / 60:.0f} min budget; took "
            f"{total / 60:.1f} min (" + ", ".join(f"{k} {v['took_s'] / 60:.1f} vs {v['planned_s'] / 60:.1f} planned"
                                                 for k, v in check.items() if k != "calibration") + ").")
    md = folder / "demo_report.md"
    write_text_atomic(md, md.read_text(encoding="utf-8") + f"\nBudget: {text}\n{kept}\n")
    js = folder / "demo_report.json"
    write_json_atomic(js, {**json.loads(js.read_text(encoding="utf-8")), "budget": text,
                           "budget_check": {"stages": check, "planned_s": round(planned["total_s"], 1),
                                            "took_s": round(total, 1), "budget_s": planned["budget_s"]}})
    return kept
