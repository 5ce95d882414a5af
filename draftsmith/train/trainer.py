"""The training core shared by online and offline training.

One loop: a feature source turns sample indices into batches, `ttt_forward` unrolls
the draft, AdamW + warmup/cosine steps it. Under torchrun the draft is wrapped with
DDP (default) or FSDP2 `fully_shard`; gloo on CPU, nccl on CUDA, bf16 autocast on CUDA.

Checkpoints `<output-dir>/step_<N>/` (every --save-interval steps) and
`<output-dir>/final/` are folders SGLang loads as they are (config.json +
model.safetensors) plus `training_state/`: optimizer and scheduler (safetensors + JSON),
RNG states and the data position, so `--resume` continues the exact same run. Each
folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from draftsmith import dist
from draftsmith.draft.config import Eagle3Config
from draftsmith.draft.model import Eagle3Draft
from draftsmith.errors import DraftsmithError, InputError
from draftsmith.fsutil import write_json_atomic, write_text_atomic
from draftsmith.logs import get_logger
from draftsmith.target.dtype import NAMES as DTYPE_NAMES, resolve_autocast, resolve_dtype
from draftsmith.train.evaluate import BestTracker, SubsetSource, decode_tau, holdout_split, selection_figure
from draftsmith.train.ttt import summarize, ttt_forward

STATE_DIR = "training_state"
log = get_logger(__name__)


def metric_sums(r) -> list[float]:
    """A TTT result as one flat list to sum and all-reduce: per step loss, draft-vocab hits, served
    hits (0 when unknown), rows."""
    served = r.correct_served if r.correct_served is not None else [0] * len(r.count)
    return list(r.loss_sum) + list(r.correct_draft_vocab) + list(served) + list(r.count)


def summarize_sums(sums: list[float], length: int, served_known: bool) -> dict:
    return summarize(sums[:length], sums[length:2 * length], sums[3 * length:4 * length],
                     sums[2 * length:3 * length] if served_known else None)


@dataclass
class TrainConfig:
    mode: str = "online"                          # online | offline
    target_model_path: str | None = None
    train_data_path: str | None = None            # conversations / pre-formatted JSONL or tokenized folder
    eval_data_path: str | None = None
    train_hidden_states_path: str | None = None   # offline feature store
    eval_hidden_states_path: str | None = None
    is_preformatted: bool = False
    chat_template: str | None = None
    max_length: int = 2048
    draft_vocab_size: int = 32000
    aux_layers: list[int] | None = None           # HF hidden_states indices; None: [2, L//2, L-3] / the store's
    draft_model_config: str | None = None         # JSON file of Eagle3Config overrides
    ttt_length: int = 7
    loss_decay: float = 0.8
    num_epochs: int = 1
    max_steps: int | None = None                  # stop early (the schedule still spans num_epochs)
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.015
    max_grad_norm: float = 0.5
    weight_decay: float = 0.0
    output_dir: str = "outputs/eagle3"
    save_interval: int = 1000
    eval_interval: int = 1000
    eval_holdout: int = 0                         # hold out this many training samples as the eval split
    eval_decode: int = 0                          # also decode this many held-out prompts (real spec decoding)
    eval_decode_tokens: int = 64                  # new tokens per decoded prompt
    early_stop: int | None = None                 # stop after this many evaluations without a better best/
    log_interval: int = 1
    seed: int = 0
    tp_size: int = 1
    dtype: str = "auto"                           # target (online) / embeddings dtype; auto: target.dtype policy
    device: str | None = None                     # None: cuda:<local rank> if available, else cpu
    parallel: str = "ddp"                         # ddp | fsdp
    autocast: str = "auto"                        # auto (bf16 on CUDA and native-bf16 CPUs) | bf16 | off
    attention: str = "auto"                       # auto (flex on CUDA, else blockwise) | blockwise | sdpa | flex
    report_to: str = "none"                       # none | tensorboard | wandb
    resume: str | None = None                     # "latest" or a checkpoint folder
    trust_remote_code: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.mode not in ("online", "offline"):
            raise InputError("must be online or offline", field="--mode")
        if self.mode == "online" and not (self.target_model_path and self.train_data_path):
            raise InputError("online training needs --target-model-path and --train-data-path", field="--mode")
        if self.mode == "offline" and not self.train_hidden_states_path:
            raise InputError("offline training needs --train-hidden-states-path", field="--mode")
        for name in ("ttt_length", "num_epochs", "batch_size", "gradient_accumulation_steps", "save_interval",
                     "eval_interval", "log_interval", "tp_size", "max_length"):
            if getattr(self, name) < 1:
                raise InputError("must be >= 1", field="--" + name.replace("_", "-"))
        for name in ("eval_holdout", "eval_decode"):
            if getattr(self, name) < 0:
                raise InputError("must be >= 0", field="--" + name.replace("_", "-"))
        if self.eval_decode_tokens < 1:
            raise InputError("must be >= 1", field="--eval-decode-tokens")
        if self.early_stop is not None and self.early_stop < 1:
            raise InputError("must be >= 1 (evaluations without improvement)", field="--early-stop")
        if self.eval_holdout and (self.eval_data_path or self.eval_hidden_states_path):
            raise InputError("give either an eval split (--eval-data-path / --eval-hidden-states-path) or "
                             "--eval-holdout, not both", field="--eval-holdout")
        if self.parallel not in ("ddp", "fsdp"):
            raise InputError("must be ddp or fsdp", field="--parallel")
        if self.autocast not in ("auto", "bf16", "off"):
            raise InputError(f"--autocast must be auto, bf16 or off, got {self.autocast!r}", field="--autocast")
        if self.dtype != "auto" and self.dtype not in DTYPE_NAMES:
            raise InputError(f"unknown dtype {self.dtype!r} (auto or one of {', '.join(DTYPE_NAMES)})",
                             field="--dtype")
        if self.attention not in ("auto", "blockwise", "sdpa", "flex"):
            raise InputError("must be auto, blockwise, sdpa or flex", field="--attention")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise InputError("must be none, tensorboard or wandb", field="--report-to")


class TTTModule(torch.nn.Module):
    """The draft with TTT as its forward, so DDP / FSDP see one forward per micro-batch."""

    def __init__(self, draft: Eagle3Draft, target_head: torch.Tensor | None, length: int, decay: float,
                 attention: str, full_head: torch.Tensor | None = None):
        super().__init__()
        self.draft = draft
        self.target_head, self.full_head = target_head, full_head
        self.length, self.decay, self.attention = length, decay, attention

    def forward(self, batch: dict[str, torch.Tensor]):
        return ttt_forward(self.draft, batch, length=self.length, decay=self.decay,
                           target_head=self.target_head, full_head=self.full_head, attention=self.attention)


# ----- data order --------------------------------------------------------------------------------

def epoch_batches(num_samples: int, batch_size: int, epoch: int, seed: int, dp_rank: int,
                  dp_size: int) -> list[list[int]]:
    """This rank's micro-batches for an epoch: a seeded shuffle, the same number on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=g).tolist()
    per_rank = num_samples // dp_size
    mine = order[dp_rank * per_rank:(dp_rank + 1) * per_rank]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


# ----- training state ✱ --------------------------------------------------------------------------

def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for key, entry in state["state"].items():
        meta["state"][str(key)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}::{name}"] = value.detach().cpu().contiguous()
                meta["state"][str(key)][name] = {"tensor": f"{key}::{name}"}
            else:
                meta["state"][str(key)][name] = {"value": value}
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for key, entry in meta["state"].items():
        state[key] = {name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": state["torch"]}
    np_state = state["numpy"]
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta = {"python": [state["python"][0], list(state["python"][1]), state["python"][2]],
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    for i, s in enumerate(state.get("cuda", [])):
        tensors[f"cuda_{i}"] = s
    meta["cuda"] = len(state.get("cuda", []))
    return tensors, meta


def _rng_restore(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["numpy_keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    torch.set_rng_state(tensors["torch"])
    if meta.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"cuda_{i}"] for i in range(meta["cuda"])])


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """`latest`: the checkpoint folder of output_dir with the highest step (None if there is none)."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_DIR / "trainer.json").exists():
            raise InputError("not a training checkpoint (no training_state/trainer.json)", path=path,
                             field="--resume")
        return path
    best, best_step = None, -1
    for path in list(output_dir.glob("step_*")) + [output_dir / "final"]:
        meta = path / STATE_DIR / "trainer.json"
        if meta.exists():
            step = json.loads(meta.read_text(encoding="utf-8"))["global_step"]
            if step > best_step:
                best, best_step = path, step
    return best


# ----- the trainer -------------------------------------------------------------------------------

class Trainer:
    """State of one run: the wrapped draft, optimizer, scheduler, sources and data position."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.info = dist.init_distributed(cfg.device)
        self.device = self.info.device
        self.dp_rank, self.dp_size = dist.dp_coords(self.info, cfg.tp_size)
        self.output_dir = Path(cfg.output_dir)
        self.target = None
        self.autocast_dtype = resolve_autocast(cfg.autocast, self.device)
        self._setup_data_and_draft()
        self._wrap_and_optimize()
        self.global_step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.writer = None
        self.best = BestTracker()
        self._decoder = None

    # .. setup ..
    def _setup_data_and_draft(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        from draftsmith.train import sources

        dtype = resolve_dtype(cfg.dtype, self.device, "train",
                              what="target" if cfg.mode == "online" else "target embeddings")
        data_dir = None
        if cfg.mode == "online":
            from draftsmith.target.hf import load_target

            self.target = load_target(cfg.target_model_path, dtype=dtype, device=self.device,
                                      aux_layers=cfg.aux_layers, tp_size=cfg.tp_size,
                                      trust_remote_code=cfg.trust_remote_code, stage="train")
            train_ds, data_dir = self._tokenized(cfg.train_data_path, "--train-data-path")
            self.train_source = sources.OnlineSource(train_ds, self.target, cfg.max_length)
            self.eval_source = None
            if cfg.eval_data_path:
                eval_ds, _ = self._tokenized(cfg.eval_data_path, "--eval-data-path")
                self.eval_source = sources.OnlineSource(eval_ds, self.target, cfg.max_length)
            target_config, aux_layers = self.target.config, self.target.aux_layers
            embed, lm_head = self.target.embed_tokens.weight, self.target.lm_head_weight
            vocab_size = self.target.vocab_size
            model_path = cfg.target_model_path
        else:
            from transformers import AutoConfig

            from draftsmith.features import FeatureStore

            store = FeatureStore.open(cfg.train_hidden_states_path)
            manifest = store.manifest
            model_path = cfg.target_model_path or manifest.get("model")
            if not model_path:
                raise InputError("the store names no model: give --target-model-path", field="--target-model-path")
            self.train_source = sources.OfflineSource(store, cfg.max_length)
            self.eval_source = None
            if cfg.eval_hidden_states_path:
                eval_store = FeatureStore.open(cfg.eval_hidden_states_path)
                if eval_store.manifest.get("aux_layers") != manifest.get("aux_layers"):
                    raise InputError("eval store has other aux layers than the train store",
                                     path=cfg.eval_hidden_states_path, field="aux_layers")
                self.eval_source = sources.OfflineSource(eval_store, cfg.max_length)
            target_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
            aux_layers = list(manifest["aux_layers"])
            if cfg.aux_layers is not None and list(cfg.aux_layers) != aux_layers:
                raise InputError(f"the store holds aux layers {aux_layers}, not {list(cfg.aux_layers)}",
                                 path=cfg.train_hidden_states_path, field="--aux-layers")
            weights = sources.load_target_weights(model_path, dtype)
            embed, lm_head = weights.embed.to(self.device), weights.lm_head
            vocab_size = int(embed.shape[0])
            if self.train_source.signal == "topk" or cfg.train_data_path:
                data_path = cfg.train_data_path or manifest.get("data")
                _, data_dir = self._tokenized(data_path, "--train-data-path", model_path=model_path)
            if self.train_source.signal == "topk":
                vd = int(manifest["draft_vocab_size"])
                if cfg.draft_vocab_size != vd:
                    print(f"train: the top-K store was made over a {vd}-token draft vocab; using it",
                          file=sys.stderr)
                cfg.draft_vocab_size = vd

        vd = min(cfg.draft_vocab_size, vocab_size)
        d2t, t2d = self._vocab_mapping(data_dir, vocab_size, vd)
        if cfg.mode == "offline" and self.train_source.signal == "topk":
            want = self.train_source.store.manifest.get("settings", {}).get("draft_vocab")
            got = sources.draft_vocab_digest(torch.arange(vd) + d2t)
            if want and want != got:
                raise InputError("the store's top-K draft vocabulary differs from the one built from the data "
                                 "(give the --train-data-path the store was made from)",
                                 path=cfg.train_hidden_states_path, field="draft_vocab")
        overrides = None
        if cfg.draft_model_config:
            try:
                overrides = json.loads(Path(cfg.draft_model_config).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(f"cannot read draft config overrides: {e}", path=cfg.draft_model_config,
                                 field="--draft-model-config") from None
        dcfg = Eagle3Config.from_target_config(target_config, draft_vocab_size=vd, aux_layer_ids=aux_layers,
                                               overrides=overrides)
        dcfg.dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        torch.manual_seed(cfg.seed)
        self.draft = Eagle3Draft(dcfg).to(self.device)
        self.draft.set_vocab_mapping(d2t.to(self.device), t2d.to(self.device))
        self.draft.load_embeddings(embed.to(self.device))
        self.target_head = self.full_head = None
        if self.train_source.signal == "hidden":
            self.target_head = lm_head.index_select(0, self.draft.draft_to_target.to(lm_head.device)) \
                .to(self.device).detach()
            if vd < vocab_size:   # the full-vocab argmax servers verify against (train/ttt.py)
                self.full_head = lm_head.to(self.device).detach()
        self.model_path, self.dtype = model_path, dtype
        if cfg.eval_holdout:
            # the draft vocab above counted every row; the held-out rows only leave the training order
            if cfg.eval_holdout >= len(self.train_source):
                raise InputError(f"cannot hold out {cfg.eval_holdout} of {len(self.train_source)} samples",
                                 field="--eval-holdout")
            train_idx, eval_idx = holdout_split(len(self.train_source), cfg.eval_holdout, cfg.seed)
            self.train_source, self.eval_source = (SubsetSource(self.train_source, train_idx),
                                                   SubsetSource(self.train_source, eval_idx))
        if self.eval_source is None and (cfg.eval_decode or cfg.early_stop):
            raise InputError("needs a held-out split: --eval-data-path / --eval-hidden-states-path or "
                             "--eval-holdout N", field="--eval-decode" if cfg.eval_decode else "--early-stop")
        if cfg.eval_decode and cfg.parallel == "fsdp" and self.info.world_size > 1:
            raise InputError("real decoding during training needs the whole draft on one rank: use --parallel ddp",
                             field="--eval-decode")
        for name, source in (("train", self.train_source), ("eval", self.eval_source)):
            if source is not None and not source.has_target_argmax and vd < vocab_size:
                log.warning("the %s top-K store predates stored full-vocab argmaxes: its served tau is unknown "
                            "(reported as null; tau_draft_vocab overstates it). Rerun hidden-states to get it.",
                            name)

    def _tokenized(self, path: str, flag: str, model_path: str | None = None):
        from draftsmith.data.build import load_tokenized

        if not path:
            raise InputError("no data path given (a top-K store needs the tokenized data it was made from)",
                             field=flag)
        kwargs = dict(tokenizer=model_path or self.cfg.target_model_path, chat_template=self.cfg.chat_template,
                      max_length=self.cfg.max_length, is_preformatted=self.cfg.is_preformatted, flag=flag)
        if self.info.is_main:
            result = load_tokenized(path, **kwargs)
        dist.barrier()
        if not self.info.is_main:
            result = load_tokenized(path, **kwargs)   # a cache hit now
        return result

    def _vocab_mapping(self, data_dir, vocab_size: int, vd: int) -> tuple[torch.Tensor, torch.Tensor]:
        if vd >= vocab_size:
            return torch.zeros(vocab_size, dtype=torch.long), torch.ones(vocab_size, dtype=torch.bool)
        if data_dir is None:
            return vocab_from_store(self.train_source.store, vocab_size, vd)
        from draftsmith.data.vocab import build_vocab_mapping

        if self.info.is_main:
            vm = build_vocab_mapping(str(data_dir), target_vocab_size=vocab_size, draft_vocab_size=vd)
        dist.barrier()
        if not self.info.is_main:
            vm = build_vocab_mapping(str(data_dir), target_vocab_size=vocab_size, draft_vocab_size=vd)
        return vm.d2t.long(), vm.t2d.bool()

    def _wrap_and_optimize(self) -> None:
        cfg = self.cfg
        attention = cfg.attention
        if attention == "auto":
            attention = "flex" if self.device.type == "cuda" else "blockwise"
        module = TTTModule(self.draft, self.target_head, cfg.ttt_length, cfg.loss_decay, attention, self.full_head)
        self.module = module
        if self.info.world_size > 1:
            if cfg.parallel == "fsdp":
                from torch.distributed.fsdp import fully_shard

                mesh = dist.device_mesh(self.info, 1)["dp"]
                fully_shard(module, mesh=mesh, reshard_after_forward=False)
            else:
                from torch.nn.parallel import DistributedDataParallel as DDP

                ids = [self.device.index] if self.device.type == "cuda" else None
                module = DDP(module, device_ids=ids, broadcast_buffers=False)
        self.model = module
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.95),
                                           weight_decay=cfg.weight_decay)
        self.batches_per_epoch = len(epoch_batches(len(self.train_source), cfg.batch_size, 0, cfg.seed,
                                                   self.dp_rank, self.dp_size))
        if self.batches_per_epoch == 0:
            raise InputError(f"{len(self.train_source)} samples cannot feed {self.dp_size} data-parallel ranks",
                             field="--train-data-path")
        self.steps_per_epoch = max(1, self.batches_per_epoch // cfg.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * cfg.num_epochs
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.total_steps, warmup))

    # .. checkpoints ..
    def save(self, name: str) -> Path:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.module, options=opts)
        optim_state = get_optimizer_state_dict(self.module, self.optimizer, options=opts)
        final = self.output_dir / name
        if self.info.is_main:
            tmp = self.output_dir / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            weights = {k.removeprefix("draft."): v.contiguous() for k, v in model_state.items()}
            weights["d2t"], weights["t2d"] = weights["d2t"].long(), weights["t2d"].bool()
            self.draft.save_pretrained(tmp, state_dict=weights)
            state_dir = tmp / STATE_DIR
            state_dir.mkdir()
            tensors, meta = _flatten_optimizer(optim_state)
            save_file(tensors, str(state_dir / "optimizer.safetensors"))
            rng_tensors, rng_meta = _rng_to_files(rng_state())
            save_file(rng_tensors, str(state_dir / "rng.safetensors"))
            write_json_atomic(state_dir / "optimizer.json", meta)
            write_json_atomic(state_dir / "trainer.json", {
                "global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "scheduler": self.scheduler.state_dict(), "rng": rng_meta, "world_size": self.info.world_size,
                "best": self.best.to_dict(),
                "config": {k: v for k, v in asdict(self.cfg).items() if k != "extra"}})
            if final.exists():
                old = self.output_dir / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        dist.barrier()
        return final

    def load(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        state_dir = path / STATE_DIR
        meta = json.loads((state_dir / "trainer.json").read_text(encoding="utf-8"))
        if meta["world_size"] != self.info.world_size:
            raise InputError(f"checkpoint was written by {meta['world_size']} ranks, this run has "
                             f"{self.info.world_size}: the data position would not match", path=path,
                             field="--resume")
        weights = load_file(str(path / "model.safetensors"))
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(self.module, {f"draft.{k}": v for k, v in weights.items()}, options=opts)
        optim_meta = json.loads((state_dir / "optimizer.json").read_text(encoding="utf-8"))
        optim = _unflatten_optimizer(load_file(str(state_dir / "optimizer.safetensors")), optim_meta)
        set_optimizer_state_dict(self.module, self.optimizer, optim, options=opts)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.global_step, self.epoch, self.batch_in_epoch = meta["global_step"], meta["epoch"], meta["batch_in_epoch"]
        self.best = BestTracker.from_dict(meta.get("best"))
        _rng_restore(load_file(str(state_dir / "rng.safetensors")), meta["rng"])

    # .. metrics ..
    def _reduce(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(t)
        return t.tolist()

    def _log(self, row: dict) -> None:
        if not self.info.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer(row)

    def _open_reporter(self) -> None:
        if not self.info.is_main or self.cfg.report_to == "none":
            return
        if self.cfg.report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise DraftsmithError("--report-to tensorboard needs the tensorboard package") from e
            tb = SummaryWriter(str(self.output_dir / "tensorboard"))

            def write(row):
                prefix = row.get("split", "train")
                for key, value in row.items():
                    if isinstance(value, list):
                        for k, v in enumerate(value):
                            tb.add_scalar(f"{prefix}/{key}_{k}", v, row["step"])
                    elif isinstance(value, (int, float)) and key != "step":
                        tb.add_scalar(f"{prefix}/{key}", value, row["step"])
                tb.flush()
            self.writer = write
        else:
            try:
                import wandb
            except ImportError as e:
                raise DraftsmithError("--report-to wandb needs the wandb package") from e
            run = wandb.init(project="draftsmith", config=asdict(self.cfg), dir=str(self.output_dir))
            self.writer = lambda row: run.log({f"{row.get('split', 'train')}/{k}": v for k, v in row.items()
                                               if k != "split" and v is not None}, step=row["step"])

    def _autocast(self):
        """bf16 autocast for the draft's matmuls (weights and optimizer state stay fp32)."""
        if self.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self) -> dict | None:
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
        s = summarize_sums(sums, length, served)
        row = {"split": "eval", "step": self.global_step, "epoch": self.epoch, **s,
               "supervised_rows": int(sums[3 * length])}
        if self.cfg.eval_decode:
            row["decode_tau"] = self._decode_tau()
        return row

    def _decode_tau(self) -> float | None:
        """Real speculative decoding of the first reply of --eval-decode held-out rows (rank 0)."""
        value = None
        if self.info.is_main:
            if self._decoder is None:
                from transformers import AutoTokenizer

                from draftsmith.target.prompting import eos_ids

                if self.target is not None:
                    model = self.target.model
                else:
                    from draftsmith.target.hf import load_target

                    model = load_target(self.model_path, dtype=self.dtype, device=self.device,
                                        trust_remote_code=self.cfg.trust_remote_code).model
                tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=self.cfg.trust_remote_code)
                self._decoder = (model, eos_ids(tokenizer, model))
            model, eos = self._decoder
            n = min(self.cfg.eval_decode, len(self.eval_source))
            prompts = [p for p in (self.eval_source.prompt_ids(i) for i in range(n)) if p]
            value = decode_tau(model, self.draft, prompts, self.cfg.ttt_length, self.cfg.eval_decode_tokens, eos)
        return dist.broadcast_object(value)

    def _judge(self, row: dict) -> None:
        """Keep best/ by the held-out figure (evaluate.selection_figure) and count evaluations since."""
        metric, value = selection_figure(row)
        if self.best.update(metric, value, self.global_step):
            self.save("best")
        row.update(best_metric=metric, best_value=self.best.value, best_step=self.best.step)

    # .. loop ..
    def train(self) -> dict:
        cfg = self.cfg
        if self.info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            path = find_resume_checkpoint(self.output_dir, cfg.resume)
            if path is not None:
                self.load(path)
                if self.info.is_main:
                    print(f"train: resumed from {path} at step {self.global_step}", file=sys.stderr)
        if self.info.is_main:
            self._truncate_metrics()
            write_json_atomic(self.output_dir / "train_config.json",
                              {k: v for k, v in asdict(cfg).items() if k != "extra"})
        self._open_reporter()
        stop_at = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        bar = None
        if self.info.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=stop_at, initial=self.global_step, desc="train", unit="step", file=sys.stderr)
        self.model.train()
        length = cfg.ttt_length
        acc = [0.0] * (4 * length + 1)          # metric_sums per step, tokens
        served = True
        busy = 0.0                               # seconds of training work since the last log row
        last_eval = None
        while self.global_step < stop_at and self.epoch < cfg.num_epochs:
            batches = epoch_batches(len(self.train_source), cfg.batch_size, self.epoch, cfg.seed,
                                    self.dp_rank, self.dp_size)
            usable = self.steps_per_epoch * cfg.gradient_accumulation_steps
            while self.batch_in_epoch < usable and self.global_step < stop_at:
                t0 = time.perf_counter()
                micro = self.batch_in_epoch % cfg.gradient_accumulation_steps
                batch = self.train_source.batch(batches[self.batch_in_epoch], self.device)
                last_micro = micro == cfg.gradient_accumulation_steps - 1
                sync = contextlib.nullcontext()
                if not last_micro and hasattr(self.model, "no_sync"):
                    sync = self.model.no_sync()
                elif hasattr(self.model, "set_requires_gradient_sync"):
                    self.model.set_requires_gradient_sync(last_micro)
                with sync:
                    with self._autocast():
                        r = self.model(batch)
                    (r.loss / cfg.gradient_accumulation_steps).backward()
                acc = [a + b for a, b in zip(acc, metric_sums(r) + [float(batch["attention_mask"].sum())])]
                served = served and r.correct_served is not None
                self.batch_in_epoch += 1
                if not last_micro:
                    busy += time.perf_counter() - t0
                    continue
                grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                busy += time.perf_counter() - t0
                if self.global_step % cfg.log_interval == 0 or self.global_step == stop_at:
                    sums = self._reduce(acc)
                    s = summarize_sums(sums, length, served)
                    row = {"step": self.global_step, "epoch": self.epoch, "lr": lr, **s,
                           "grad_norm": float(grad_norm), "tokens": int(sums[-1]),
                           "tokens_per_s": sums[-1] / busy if busy > 0 else 0.0}
                    self._log(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{s['loss_k'][0]:.3f}",
                                        tau="?" if s["tau"] is None else f"{s['tau']:.2f}",
                                        tau_dv=f"{s['tau_draft_vocab']:.2f}", tok_s=f"{row['tokens_per_s']:.0f}")
                    acc = [0.0] * (4 * length + 1)
                    served = True
                    busy = 0.0
                if bar is not None:
                    bar.update(1)
                if self.global_step % cfg.eval_interval == 0:
                    last_eval = self.evaluate()
                    if last_eval:
                        self._judge(last_eval)
                        self._log(last_eval)
                if self.global_step % cfg.save_interval == 0:
                    self.save(f"step_{self.global_step}")
                if self.best.exhausted(cfg.early_stop):
                    log.info("early stop at step %d: no better held-out %s for %d evaluations (best %.4f at "
                             "step %d)", self.global_step, self.best.metric, self.best.evals_since,
                             self.best.value, self.best.step)
                    stop_at = self.global_step
                    break
            if self.batch_in_epoch >= usable:
                self.epoch += 1
                self.batch_in_epoch = 0
        if last_eval is None or last_eval["step"] != self.global_step:
            last_eval = self.evaluate()
            if last_eval:
                self._judge(last_eval)
                self._log(last_eval)
        final = self.save("final")
        if bar is not None:
            bar.close()
        return {"final": str(final), "global_step": self.global_step, "eval": last_eval,
                "best": str(self.output_dir / "best") if self.best.step is not None else None,
                "best_step": self.best.step, "best_value": self.best.value}

    def _truncate_metrics(self) -> None:
        """Drop rows past the resumed step so a resumed run's log reads as one run."""
        if not self.metrics_path.exists():
            return
        rows = [line for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= self.global_step]
        if not self.cfg.resume:
            rows = []
        write_text_atomic(self.metrics_path, "".join(r + "\n" for r in rows))

    def close(self) -> None:
        if self.target is not None:
            self.target.close()


def vocab_from_store(store, vocab_size: int, draft_vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft vocabulary = the most frequent supervised tokens of the store (ties: lower id)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for i in range(len(store)):
        raw = store.raw(i)
        ids = raw["input_ids"].long()[raw["loss_mask"].bool()]
        counts += torch.bincount(ids, minlength=vocab_size)
    order = torch.argsort(-counts, stable=True)[:draft_vocab_size]
    chosen = order.sort().values
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[chosen] = True
    return chosen - torch.arange(draft_vocab_size), t2d


def train(cfg: TrainConfig) -> dict:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
