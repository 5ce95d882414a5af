"""The training core shared by online and offline training: one loop, read top to bottom.

A feature source (train/sources.py `build_sources`: online target or offline store, and the
held-out split) turns sample indices into batches; `build_draft` (train/draft_setup.py) makes
the draft over its vocabulary; `ttt_forward` (train/ttt.py) unrolls the
draft; AdamW with linear warmup and a cosine decay steps it. Around the loop, one part per
job: `parallelize` (train/parallel.py: DDP or FSDP2 under torchrun, from outside the
draft), `CheckpointManager` (train/checkpoint.py: `step_<N>/`, `best/`, `final/` — each a
folder SGLang loads as it is, plus the state `--resume` needs), `MetricsLogger`
(train/metrics.py: metrics.jsonl, progress bar, TensorBoard / W&B) and the held-out
evaluation that picks `best/` and stops early (train/evaluate.py).

Data order (train/data.py): each epoch is a seeded permutation of the samples cut into global
batches of batch size × data-parallel ranks × accumulation steps, each rank taking its share
of each; a `TrainLoader` (DataLoader: workers decode and pad ahead of the step) delivers this
rank's micro-batches. A checkpoint records the position as (epoch, optimizer steps done in it),
so a resumed run — with any number of ranks that keeps the global batch — trains on exactly
the samples the uninterrupted run would. The step draws no random numbers (no dropout; the
order is a function of the seed and the epoch), so no RNG state needs restoring.
The lr schedule spans `--num-epochs` even when `--max-steps` or `--early-stop` ends the
run sooner.

Loss normalization: an optimizer step's loss is, per TTT step k, the CE summed over the
supervised rows of its whole global batch (every micro-batch of every data-parallel rank)
divided by their number (`_step_norm`: the counts of the step's micro-batches, all-reduced).
So the gradient does not depend on how the global batch is split: 2 ranks × batch 1 ==
1 rank × batch 2 == batch 1 × 2 accumulation steps (tests/test_equivalence.py), where a
per-micro-batch mean averaged over ranks and steps would weight a short sample's tokens
more. Ranks of one tensor-parallel group (online `--tp-size`) hold the same batch and are
counted once, in the loss and in the logged token and row counts (`_reduce`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from draftsmith import dist
from draftsmith.draft.model import Eagle3Draft
from draftsmith.errors import InputError
from draftsmith.fsutil import write_json_atomic
from draftsmith.logs import get_logger
from draftsmith.target.dtype import resolve_autocast, resolve_dtype
from draftsmith.train.checkpoint import CheckpointManager
from draftsmith.train.config import TrainConfig
from draftsmith.train.data import DataOrder, TrainLoader, default_workers, epoch_batches  # noqa: F401 (epoch_batches: API)
from draftsmith.train.draft_setup import build_draft
from draftsmith.train.evaluate import BestTracker, decode_tau, selection_figure
from draftsmith.train.metrics import MetricsLogger
from draftsmith.train.packing import PackedUnits
from draftsmith.train.parallel import parallelize
from draftsmith.train.sources import build_sources
from draftsmith.train.ttt import step_counts, step_metrics, ttt_forward

log = get_logger(__name__)


class TTTModule(torch.nn.Module):
    """The draft with TTT as its forward, so DDP / FSDP see one forward per micro-batch."""

    def __init__(self, draft: Eagle3Draft, target_head: torch.Tensor | None, length: int, decay: float,
                 attention: str, full_head: torch.Tensor | None = None, checkpointing: bool = False,
                 weighting: str = "decay", feature_weight: float = 0.0, temperature: float = 1.0):
        super().__init__()
        self.draft = draft
        self.target_head, self.full_head = target_head, full_head
        self.length, self.decay, self.attention = length, decay, attention
        self.checkpointing, self.weighting, self.feature_weight = checkpointing, weighting, feature_weight
        self.temperature = temperature
        self.deep_scale = 1.0    # the weight of TTT steps >= 1; the trainer ramps it (--ttt-curriculum)

    def forward(self, batch: dict[str, torch.Tensor], step_norm: list[float] | None = None):
        return ttt_forward(self.draft, batch, length=self.length, decay=self.decay,
                           target_head=self.target_head, full_head=self.full_head, attention=self.attention,
                           checkpointing=self.checkpointing, step_norm=step_norm, weighting=self.weighting,
                           feature_weight=self.feature_weight, temperature=self.temperature,
                           deep_scale=self.deep_scale)


def lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def curriculum_scale(step: int, total_steps: int, share: float) -> float:
    """--ttt-curriculum: the weight of TTT steps >= 1 at optimizer step `step` (0-based), a linear
    ramp from 0 to 1 over the first `share` of the run; a function of the step alone, so a resumed
    run continues the same ramp."""
    ramp = share * total_steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


def metric_sums(r) -> list[float]:
    """A TTT result as one flat list to sum and all-reduce: per step loss, draft-vocab hits, served
    hits (0 when unknown), rows."""
    served = r.correct_served if r.correct_served is not None else [0] * len(r.count)
    return list(r.loss_sum) + list(r.correct_draft_vocab) + list(served) + list(r.count)


def summarize_sums(sums: list[float], length: int, served_known: bool) -> dict:
    return step_metrics(sums[:length], sums[length:2 * length], sums[3 * length:4 * length],
                     sums[2 * length:3 * length] if served_known else None)


class Trainer:
    """One run: the draft and its wrapper, optimizer, schedule, sources, data position and parts."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.info = dist.init_distributed(cfg.device)
        self.device = self.info.device
        self.dp_rank, self.dp_size = dist.dp_coords(self.info, cfg.tp_size)
        self.output_dir = Path(cfg.output_dir)
        self.autocast_dtype = resolve_autocast(cfg.autocast, self.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device, "train",
                                   what="target" if cfg.mode == "online" else "target embeddings")
        torch.manual_seed(cfg.seed)
        self.setup = build_sources(cfg, self.info, self.dtype)
        self.train_source, self.eval_source, self.target = self.setup.train, self.setup.eval, self.setup.target
        self._check_eval_options()
        self.draft, target_head, full_head = build_draft(cfg, self.setup, self.info)
        attention = cfg.attention
        if attention == "auto":
            attention = "flex" if self.device.type == "cuda" else "blockwise"
        self.module = TTTModule(self.draft, target_head, cfg.ttt_length, cfg.loss_decay, attention, full_head,
                                checkpointing=cfg.activation_checkpointing, weighting=cfg.ttt_weighting,
                                feature_weight=cfg.feature_loss, temperature=cfg.distill_temperature)
        self.model = parallelize(self.module, self.info, cfg.parallel)
        self.optimizer = torch.optim.AdamW([p for p in self.module.parameters() if p.requires_grad],
                                           lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        units = PackedUnits(self.train_source.lengths, cfg.max_length, cfg.seed) if cfg.packing else None
        self.order = DataOrder(len(self.train_source), cfg.seed, cfg.batch_size, self.dp_rank, self.dp_size,
                               cfg.gradient_accumulation_steps, units=units)   # --packing: units are packed rows
        self.steps_per_epoch = self.order.steps_in_epoch()
        if self.steps_per_epoch == 0:
            raise InputError(f"{len(self.train_source)} samples cannot fill one global batch of "
                             f"{self.order.global_batch} (--batch-size {cfg.batch_size} × {self.dp_size} "
                             f"data-parallel ranks × {cfg.gradient_accumulation_steps} accumulation steps)",
                             field="--train-data-path")
        self.total_steps = self.steps_per_epoch * cfg.num_epochs
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.total_steps, warmup))
        self.checkpoints = CheckpointManager(self.output_dir, self.info)
        self.metrics = MetricsLogger(self.output_dir, cfg.report_to, self.info.is_main, asdict(cfg))
        self.global_step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best = BestTracker()
        self._decoder = None

    # .. setup ..
    def _check_eval_options(self) -> None:
        cfg = self.cfg
        if self.eval_source is None and (cfg.eval_decode or cfg.early_stop):
            raise InputError("needs a held-out split: --eval-data-path / --eval-hidden-states-path or "
                             "--eval-holdout N", field="--eval-decode" if cfg.eval_decode else "--early-stop")
        if cfg.eval_decode and cfg.parallel == "fsdp" and self.info.world_size > 1:
            raise InputError("real decoding during training needs the whole draft on one rank: use --parallel ddp",
                             field="--eval-decode")

    # .. checkpoints ..
    def save(self, name: str) -> Path:
        accum = self.cfg.gradient_accumulation_steps     # saved between optimizer steps only
        state = {"global_step": self.global_step, "epoch": self.epoch, "best": self.best.to_dict(),
                 "data": {**self.order.position(self.epoch, self.batch_in_epoch // accum),
                          "packed_rows_of": self.cfg.max_length if self.cfg.packing else None}}
        return self.checkpoints.save(name, self.module, self.draft, self.optimizer, self.scheduler, state,
                                     asdict(self.cfg))

    def load(self, path: Path) -> None:
        meta = self.checkpoints.load(path, self.module, self.optimizer, self.scheduler)
        self.order.check_resume(meta["data"], path)
        saved, packed = meta["data"].get("packed_rows_of"), (self.cfg.max_length if self.cfg.packing else None)
        if saved != packed:                  # packed rows are other units: another sample order
            def what(n):
                return f"--packing into rows of {n}" if n else "no --packing"
            raise InputError(f"the checkpoint was trained with {what(saved)}, this run has {what(packed)}: the sample "
                             "order would differ", path=path, field="--packing")
        self.global_step, self.epoch = meta["global_step"], meta["data"]["epoch"]
        self.batch_in_epoch = meta["data"]["step_in_epoch"] * self.cfg.gradient_accumulation_steps
        self.best = BestTracker.from_dict(meta.get("best"))

    # .. helpers of the loop ..
    def _reduce(self, values: list[float]) -> list[float]:
        """Sums over the data-parallel replicas: the ranks of a tensor-parallel group hold the same
        batch, so only its first rank contributes."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        if torch.distributed.is_initialized():
            if self.info.rank % self.cfg.tp_size:
                t.zero_()
            torch.distributed.all_reduce(t)
        return t.tolist()

    def _step_norm(self, micro: list[dict[str, torch.Tensor]]) -> tuple[list[float], list[list[int]]]:
        """(divisor of each TTT step's CE sum, each micro-batch's own counts). DDP and FSDP2
        average gradients over the ranks, so the divisor is the global count / dp size."""
        counts = [step_counts(b, self.cfg.ttt_length) for b in micro]
        total = self._reduce([float(sum(c)) for c in zip(*counts)])
        return [max(n, 1.0) / self.dp_size for n in total], counts

    def _autocast(self):
        """bf16 autocast for the draft's matmuls (weights and optimizer state stay fp32)."""
        if self.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def _grad_sync(self, last_micro: bool):
        """Gradient accumulation: all-reduce (DDP) / reduce-scatter (FSDP2) on the last micro-batch only."""
        if not last_micro and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(last_micro)
        return contextlib.nullcontext()

    # .. held-out evaluation ..
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Simulated tau (served and draft-vocab) on the held-out split, and decoded tau if asked."""
        if self.eval_source is None:
            return None
        self.model.eval()
        n = len(self.eval_source)
        indices = list(range(self.dp_rank, n, self.dp_size))
        # every rank runs the same number of forwards (FSDP gathers parameters collectively);
        # a rank with fewer samples repeats its first one and drops the result
        per_rank = -(-n // self.dp_size)
        length = self.cfg.ttt_length
        sums = [0.0] * (4 * length)
        served = True
        for i in range(0, per_rank, self.cfg.batch_size):
            chunk = indices[i:i + self.cfg.batch_size]
            batch = self.eval_source.batch(chunk or indices[:1] or [0], self.device)
            with self._autocast():
                r = self.model(batch)
            served = served and r.correct_served is not None
            if chunk:
                sums = [a + b for a, b in zip(sums, metric_sums(r))]
        sums = self._reduce(sums)
        self.model.train()
        row = {"split": "eval", "step": self.global_step, "epoch": self.epoch, **summarize_sums(sums, length, served),
               "supervised_rows": int(sums[3 * length])}
        if self.cfg.eval_decode:
            row["decode_tau"] = self._decode_tau()
        return row

    def _decode_tau(self) -> float | None:
        """Real speculative decoding of the first reply of --eval-decode held-out rows (rank 0)."""
        value = None
        if self.info.is_main:
            if self._decoder is None:
                from draftsmith.target.loading import load_tokenizer
                from draftsmith.target.prompting import eos_ids

                if self.target is not None:
                    model = self.target.model
                else:
                    from draftsmith.target.hf import load_target

                    model = load_target(self.setup.model_path, dtype=self.dtype, device=self.device,
                                        trust_remote_code=self.cfg.trust_remote_code, stage="train").model
                tokenizer = load_tokenizer(self.setup.model_path, self.cfg.trust_remote_code)
                self._decoder = (model, eos_ids(tokenizer, model))
            model, eos = self._decoder
            n = min(self.cfg.eval_decode, len(self.eval_source))
            prompts = [p for p in (self.eval_source.prompt_ids(i) for i in range(n)) if p]
            value = decode_tau(model, self.draft, prompts, self.cfg.ttt_length, self.cfg.eval_decode_tokens, eos)
        return dist.broadcast_object(value)

    def _evaluate_and_judge(self) -> dict | None:
        """Evaluate, keep best/ by the held-out figure (evaluate.selection_figure), log the row."""
        row = self.evaluate()
        if row is None:
            return None
        metric, value = selection_figure(row)
        if self.best.update(metric, value, self.global_step):
            self.save("best")
        row.update(best_metric=metric, best_value=self.best.value, best_step=self.best.step)
        self.metrics.log(row)
        return row

    # .. the loop ..
    def train(self) -> dict:
        cfg = self.cfg
        if self.info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = None
        if cfg.resume:
            path = self.checkpoints.find_resume(cfg.resume)
            if path is not None:
                self.load(path)
                resumed = self.global_step
                log.info("resumed from %s at step %d", path, self.global_step)
        stop_at = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        if self.best.exhausted(cfg.early_stop):      # resumed from a run that had stopped early
            stop_at = self.global_step
        if self.info.is_main:
            write_json_atomic(self.output_dir / "train_config.json", asdict(cfg))
        self.metrics.open(resumed, stop_at, cfg.progress)
        self.model.train()
        length = cfg.ttt_length
        acc = [0.0] * (4 * length + 1)          # metric_sums per step, tokens
        served = True                            # every batch since the last row knew the served figure
        busy = 0.0                               # seconds of training work since the last log row
        last_eval = None
        workers = default_workers(cfg.mode) if cfg.num_workers is None else cfg.num_workers
        loader = TrainLoader(self.train_source, self.order, self.device, workers, cfg.prefetch_factor,
                             packed=cfg.packing)
        while self.global_step < stop_at and self.epoch < cfg.num_epochs:
            accum = cfg.gradient_accumulation_steps
            batches = loader.epoch(self.epoch, self.batch_in_epoch // accum)
            usable = self.steps_per_epoch * accum
            while self.batch_in_epoch < usable and self.global_step < stop_at:
                # one micro-batch: forward + backward (gradients synchronized on the last one)
                t0 = time.perf_counter()
                micro_index = self.batch_in_epoch % accum
                if micro_index == 0:       # the step's micro-batches first: their token counts normalize the loss
                    micro = [next(batches) for _ in range(accum)]
                    norm, micro_counts = self._step_norm(micro)
                    self.module.deep_scale = curriculum_scale(self.global_step, self.total_steps, cfg.ttt_curriculum)
                batch, micro[micro_index] = micro[micro_index], None
                last_micro = micro_index == accum - 1
                with self._grad_sync(last_micro):
                    with self._autocast():
                        r = self.model(batch, step_norm=norm)
                    r.loss.backward()
                if r.count != micro_counts[micro_index]:
                    raise RuntimeError(f"ttt_forward supervised {r.count} rows per step, step_counts "
                                       f"predicted {micro_counts[micro_index]}")
                acc = [a + b for a, b in zip(acc, metric_sums(r) + [float(batch["attention_mask"].sum())])]
                served = served and r.correct_served is not None
                self.batch_in_epoch += 1
                if not last_micro:
                    busy += time.perf_counter() - t0
                    continue

                # one optimizer step
                grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                busy += time.perf_counter() - t0

                # metrics, evaluation, checkpoints, early stop
                row = None
                if self.global_step % cfg.log_interval == 0 or self.global_step == stop_at:
                    sums = self._reduce(acc)
                    row = {"step": self.global_step, "epoch": self.epoch, "lr": lr,
                           **summarize_sums(sums, length, served), "grad_norm": float(grad_norm),
                           "tokens": int(sums[-1]), "tokens_per_s": sums[-1] / busy if busy > 0 else 0.0}
                    self.metrics.log(row)
                    acc, served, busy = [0.0] * (4 * length + 1), True, 0.0
                self.metrics.progress(row)
                if self.global_step % cfg.eval_interval == 0:
                    last_eval = self._evaluate_and_judge() or last_eval
                if self.global_step % cfg.save_interval == 0:
                    self.save(f"step_{self.global_step}")
                if self.best.exhausted(cfg.early_stop):
                    log.info("early stop at step %d: no better held-out %s for %d evaluations (best %.4f at step %d)",
                             self.global_step, self.best.metric, self.best.evals_since, self.best.value,
                             self.best.step)
                    stop_at = self.global_step
            if self.batch_in_epoch >= usable:
                self.epoch += 1
                self.batch_in_epoch = 0
        if last_eval is None or last_eval["step"] != self.global_step:
            last_eval = self._evaluate_and_judge()
        final = self.save("final")
        self.metrics.close()
        return {"final": str(final), "global_step": self.global_step, "eval": last_eval,
                "best": str(self.output_dir / "best") if self.best.step is not None else None,
                "best_step": self.best.step, "best_value": self.best.value}

    def close(self) -> None:
        if self.target is not None:
            self.target.close()


def train(cfg: TrainConfig) -> dict:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
