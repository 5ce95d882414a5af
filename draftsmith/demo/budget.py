"""`draftsmith demo --budget MINUTES`: size the demo's data and epochs to a time budget on this machine.

Three parts:

- `calibrate(...)` measures this machine: the target's forward with hidden states (the
  hidden-states stage, tokens/s), a fresh draft's training step (TTT forward, backward and
  AdamW, tokens/s), plain greedy decoding (new tokens/s) and one speculative verify step
  (seconds), each on a few short runs, plus the time to load the target (paid once per stage);
- `plan_budget(...)` is pure arithmetic on those throughputs and the data's shape (tokens per
  conversation, the share of conversations the dataset keeps, measured by the demo's own
  prepare-data + build-dataset on a sample): the eval's cost is fixed (questions × 2 turns ×
  max new tokens, plain decoding plus speculative decoding at τ = 1, an upper bound), and the
  rest buys conversations at one epoch each (hidden states + training); once every available
  conversation is in, more epochs (at most `MAX_EPOCHS`);
- `TAU_FIT`: τ = a + b·log2(supervised tokens × epochs), the least-squares fit of the measured
  τ-per-budget curve (bench/tau_curve.py, docs/benchmarks.md "τ per training budget"), which
  says what τ the chosen size is expected to reach and what a 2× budget would give.

The plan never promises more than the fit's range: outside the measured token range the
expected τ is marked as an extrapolation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from draftsmith.errors import InputError

MAX_EPOCHS = 4          # more passes over the same conversations are not in the measured curve
MIN_SAMPLES = 8         # fewer conversations than this do not train a draft worth evaluating


@dataclass(frozen=True)
class TauFit:
    """τ = a + b·log2(supervised training tokens × epochs), fitted on [lo_tokens, hi_tokens], for
    one target (`model`, its folder name) trained on the dataset's own replies (not regenerated)."""

    a: float
    b: float
    lo_tokens: int
    hi_tokens: int
    source: str
    model: str = "SmolLM2-135M-Instruct"

    def applies(self, model: str, regenerated: bool) -> bool:
        """Whether the fit was measured on this target and kind of replies (it does not transfer)."""
        return model == self.model and not regenerated

    def predict(self, tokens: float) -> float:
        return self.a + self.b * math.log2(max(tokens, 1.0))

    def measured(self, tokens: float) -> bool:
        return self.lo_tokens <= tokens <= self.hi_tokens


# The proxy-τ fit of bench/results/tau_curve_sharegpt.json (SmolLM2-135M-Instruct, ShareGPT replies, the
# demo's hyper-parameters: nested subsets 1 epoch + the earlier demo drafts up to 306k tokens; real decoding
# measured within ±0.03 of the proxy, docs/benchmarks.md §6.2); tests/test_demo_budget.py checks these
# against that file. Another target or data: the fit does not transfer; rerun bench/tau_curve.py.
TAU_FIT = TauFit(a=0.5664, b=0.04235, lo_tokens=2657, hi_tokens=305940,
                 source="bench/results/tau_curve_sharegpt.json#proxy_tau_with_earlier")


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
                model_stages: int = 4) -> BudgetPlan:
    """The largest data (then epochs) whose planned stage times fit in budget_s - spent_s.

    Fixed costs first: the eval, and `model_stages` target loads (regenerate-data, hidden-states,
    train, eval). Each kept conversation then costs its hidden states and one training epoch
    (and, with `regenerate`, its reply generated at the plain decoding speed)."""
    fixed = {"eval": eval_seconds(tp, num_questions, max_new_tokens), "model loads": model_stages * tp.load_s,
             "calibration": spent_s}
    avail = budget_s - sum(fixed.values())
    hs_s = shape.tokens_per_sample / tp.hidden_states_tok_s
    train_s = shape.tokens_per_sample / tp.train_tok_s
    regen_s = regenerate / tp.plain_tok_s if regenerate else 0.0
    per_sample = hs_s + train_s + regen_s
    kept_max = int(shape.available * shape.kept_ratio) if shape.available is not None else None
    kept = int(avail // per_sample) if avail > 0 else 0
    if kept_max is not None:
        kept = min(kept, kept_max)
    if kept < MIN_SAMPLES:
        need = sum(fixed.values()) + MIN_SAMPLES * per_sample
        raise InputError(f"--budget {budget_s / 60:.1f} min is too small on this machine: the eval alone takes "
                         f"{fixed['eval'] / 60:.1f} min and {MIN_SAMPLES} conversations "
                         f"{MIN_SAMPLES * per_sample / 60:.1f} min more (at least {math.ceil(need / 60)} min; "
                         f"or fewer --num-questions / --max-new-tokens)", field="--budget")
    epochs = 1
    if kept == kept_max:            # all the data is in: spend what is left on more epochs
        epochs = max(1, min(MAX_EPOCHS, 1 + int((avail - kept * per_sample) // (kept * train_s))))
    tokens = int(kept * shape.supervised_per_sample * epochs)
    seconds = {**({"regenerate-data": kept * regen_s} if regenerate else {}), "hidden-states": kept * hs_s,
               "train": kept * epochs * train_s, **fixed}
    asked = math.ceil(kept / shape.kept_ratio)
    return BudgetPlan(budget_s=budget_s, num_samples=asked if shape.available is None else min(shape.available, asked),
                      conversations=kept, num_epochs=epochs, trained_tokens=tokens, seconds=seconds,
                      expected_tau=fit.predict(tokens), extrapolated=not fit.measured(tokens))


def describe(plan: BudgetPlan, bigger: BudgetPlan | None, fit: TauFit = TAU_FIT) -> str:
    """Two sentences for the demo's log and report: the chosen size, its expected τ, and 2× the budget."""
    mark = " (extrapolated beyond the measured curve)" if plan.extrapolated else ""
    text = (f"--budget {plan.budget_s / 60:.0f} min on this machine: {plan.num_samples} conversations "
            f"(~{plan.conversations} kept) x {plan.num_epochs} epoch(s), {plan.trained_tokens:,} supervised tokens, "
            f"planned {plan.total_s / 60:.1f} min; expected tau {plan.expected_tau:.2f}{mark} "
            f"(tau = {fit.a:.3f} + {fit.b:.3f} log2 tokens, {fit.source}).")
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
              batch_size: int = 2, draft_vocab_size: int = 4096, ttt_length: int = 3, draft_depth: int = 5,
              repeats: int = 1) -> Throughput:
    """Measure this machine's throughput at each stage's work with a few short runs (tens of seconds)."""
    import torch

    from draftsmith.draft.config import Eagle3Config
    from draftsmith.draft.model import Eagle3Draft
    from draftsmith.eval.spec_decode import SpecConfig, greedy_generate, speculative_generate
    from draftsmith.target.hf import load_target
    from draftsmith.train.ttt import ttt_forward

    t0 = time.perf_counter()
    target = load_target(model_path, dtype=dtype or "auto", device=device, stage="demo --budget")
    load_s = time.perf_counter() - t0
    model, layers = target.model, list(target.aux_layers)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g).to(target.device)
    with torch.inference_mode():
        hs_s = _timed(lambda: target.features(ids), repeats)
    feats = target.features(ids[:1])

    vd = min(draft_vocab_size, vocab)
    dcfg = Eagle3Config.from_target_config(model.config, draft_vocab_size=vd, aux_layer_ids=layers)
    torch.manual_seed(0)
    draft = Eagle3Draft(dcfg).to(target.device)
    d2t = torch.zeros(vd, dtype=torch.long)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[:vd] = True
    draft.set_vocab_mapping(d2t.to(target.device), t2d.to(target.device))
    draft.load_embeddings(model.get_input_embeddings().weight.detach().float())
    head = target.lm_head_weight.detach().float()
    batch = {"input_ids": ids[:1], "loss_mask": torch.ones_like(ids[:1]), "attention_mask": torch.ones_like(ids[:1]),
             **{k: v.float() for k, v in feats.items()}}
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-4)

    def step():
        r = ttt_forward(draft, batch, length=ttt_length, target_head=head[:vd], full_head=head)
        r.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_s = _timed(step, repeats)
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
    return Throughput(hidden_states_tok_s=batch_size * seq_len / hs_s, train_tok_s=seq_len / train_s,
                      plain_tok_s=len(plain.tokens) / plain.seconds,
                      spec_step_s=spec.seconds / max(1, len(spec.emitted) + 1), load_s=load_s)


# ----- the demo's use ---------------------------------------------------------------------------------

SAMPLE_CONVERSATIONS = 64      # conversations the data shape is measured on (prepare-data + build-dataset)
PLAN_FILE = "budget_plan.json"


def measure_shape(cfg, run_dir) -> tuple[DataShape, str]:
    """Tokens per conversation and the share kept, by the demo's own prepare-data + build-dataset on a
    sample; and the target's path."""
    from dataclasses import replace

    from draftsmith.demo.pipeline import stage_build_dataset, stage_model, stage_prepare_data
    from draftsmith.demo.runner import StageContext

    ctx = StageContext(replace(cfg, num_samples=SAMPLE_CONVERSATIONS), run_dir, {}, False)
    ctx.results["model"] = stage_model(ctx)
    prepared = stage_prepare_data(ctx)
    ctx.results["regenerate-data"] = {"train_jsonl": prepared["train_jsonl"]}
    built = stage_build_dataset(ctx)
    rows = max(1, built["rows"])
    return DataShape(tokens_per_sample=built["tokens"] / rows, supervised_per_sample=built["supervised_tokens"] / rows,
                     kept_ratio=built["rows"] / SAMPLE_CONVERSATIONS), ctx.results["model"]["model_path"]


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
    print(f"  --budget {cfg.budget:g} min: measuring this machine (a sample of the data, then a few batches of "
          f"each stage's work)", flush=True)
    shape, model_path = measure_shape(cfg, run_dir / "budget")
    seq_len = max(16, min(cfg.max_length, int(round(shape.tokens_per_sample))))
    tp = calibrate(model_path, device=cfg.device, dtype=cfg.dtype, seq_len=seq_len,
                   batch_size=cfg.hidden_states_batch_size, draft_vocab_size=cfg.draft_vocab_size,
                   ttt_length=cfg.ttt_length, draft_depth=cfg.draft_depth)
    spent = time.perf_counter() - started
    print(f"  measured in {spent:.0f} s: hidden states {tp.hidden_states_tok_s:.0f} tok/s, training "
          f"{tp.train_tok_s:.0f} tok/s, plain decoding {tp.plain_tok_s:.1f} tok/s, a verify step "
          f"{tp.spec_step_s:.2f} s, target load {tp.load_s:.1f} s; {shape.tokens_per_sample:.0f} tokens "
          f"({shape.supervised_per_sample:.0f} supervised) per kept conversation, {shape.kept_ratio:.0%} kept",
          flush=True)
    kwargs = dict(num_questions=cfg.num_questions, max_new_tokens=cfg.max_new_tokens, regenerate=cfg.regenerate)
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


def add_to_report(folder, text: str) -> None:
    """The plan's sentences in the demo report (demo_report.md and demo_report.json's "budget")."""
    import json
    from pathlib import Path

    from draftsmith.fsutil import write_json_atomic, write_text_atomic

    folder = Path(folder)
    md = folder / "demo_report.md"
    write_text_atomic(md, md.read_text(encoding="utf-8") + f"\nBudget: {text}\n")
    js = folder / "demo_report.json"
    write_json_atomic(js, {**json.loads(js.read_text(encoding="utf-8")), "budget": text})
