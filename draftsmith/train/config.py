"""`TrainConfig`: every setting of a training run, with its default, flag, help and checks.

The dataclass is the single source of the `train` stage's flags, `--config` files and docs
table, through draftsmith/config.py (typed values: `learning_rate: 1e-4` in YAML is the float
0.0001; unknown keys are errors naming file, line and key; `--print-config`). `validate()`
checks the values together and names the flag of a bad one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from draftsmith.config import option
from draftsmith.errors import InputError
from draftsmith.target.dtype import DTYPE_HELP, NAMES as DTYPE_NAMES
from draftsmith.train.parallel import PARALLEL

# How the TTT steps' losses are weighed (train/ttt.py); the demo's --ttt-weighting takes the same values.
TTTWeighting = Literal["decay", "survival", "survival-hard"]


@dataclass
class TrainConfig:
    mode: Literal["online", "offline"] = option(
        "online", help="online: the target runs in the loop; offline: read a feature store")
    # data
    target_model_path: str | None = option(
        None, group="data", help="HF folder or hub name of the target (offline: for its embeddings / lm_head; "
                                 "default: the store's model)")
    train_data_path: str | None = option(
        None, group="data", help="conversations JSONL, pre-formatted JSONL (--is-preformatted) or a tokenized folder")
    eval_data_path: str | None = option(None, group="data", help="held-out split, as --train-data-path")
    train_hidden_states_path: str | None = option(None, group="data", help="offline: feature store")
    eval_hidden_states_path: str | None = option(None, group="data", help="offline: held-out feature store")
    is_preformatted: bool = option(False, group="data", help="rows are pre-formatted text, not conversations")
    chat_template: str | None = option(None, group="data", help="template name, or 'hf' (the tokenizer's)")
    max_length: int = option(2048, group="data", help="tokens per sample (longer ones are truncated)")
    num_workers: int | None = option(
        None, group="data", help="DataLoader worker processes that read, decode and pad batches ahead of the step "
                                 "(default: offline one per spare CPU core of the rank, 1 to 4; online 0; 0 = in the "
                                 "training process)")
    prefetch_factor: int = option(2, group="data", help="batches each DataLoader worker prepares ahead")
    packing: bool = option(
        False, group="data", help="pack several conversations into each row of up to --max-length tokens (positions, "
                                  "attention and TTT targets stay per conversation: the loss of the unpacked rows); "
                                  "--batch-size then counts packed rows")
    # draft
    draft_vocab_size: int = option(32000, group="draft", help="draft vocabulary (the most frequent supervised tokens)")
    aux_layers: list[int] | None = option(
        None, group="draft", sep=",", metavar="I,J,K",
        help="target layers to fuse, HF hidden_states indices (default 2,L//2,L-3; offline: the store's)")
    draft_model_config: str | None = option(
        None, group="draft", help="JSON file overriding fields of the draft config derived from the target")
    ttt_length: int = option(7, group="draft", help="training-time-test steps (the draft's own predictions fed back)")
    loss_decay: float = option(0.8, group="draft", help="weight of TTT step k is decay**k")
    lm_head_init: Literal["random", "target"] = option(
        "random", group="draft", help="the draft's lm_head at step 0: random, or the target's lm_head rows of the "
                                      "draft vocabulary (as speculators does)")
    ttt_weighting: TTTWeighting = option(
        "decay", group="draft", help="decay: step k weighs decay**k (the peers' recipe); survival: also by the "
                                     "draft's detached chance that a served chain reaches the row; survival-hard: "
                                     "only rows a served chain reaches (docs/training.md)")
    feature_loss: float = option(
        0.0, group="draft", help="weight of a SmoothL1 regression of the draft's normed output on the target's last "
                                 "hidden state (EAGLE-1's feature loss) beside the distribution loss; 0 = off")
    distill_temperature: float = option(
        1.0, group="draft", help="distillation temperature T: soft CE between the target's and the draft's "
                                 "softmax(logits / T), scaled by T²; 1 = the peers' loss")
    ttt_curriculum: float = option(
        0.0, group="draft", help="TTT-length curriculum: the weight of TTT steps >= 1 ramps linearly from 0 to "
                                 "full over this share of the optimizer steps (step 0 is fitted first); 0 = off")
    autocast: Literal["auto", "bf16", "off"] = option(
        "auto", group="draft", help="bf16 autocast of the draft's matmuls: auto = on CUDA and on CPUs with native "
                                    "bf16 (AVX512-BF16/AMX), off elsewhere (weights and optimizer state stay fp32)")
    attention: Literal["auto", "blockwise", "sdpa", "flex"] = option(
        "auto", group="draft", help="TTT attention: flex (CUDA kernel, block-sparse), blockwise (causal + diagonal "
                                    "scores), sdpa (explicit mask, reference); auto = flex on CUDA, else blockwise")
    activation_checkpointing: bool = option(
        False, group="draft", help="recompute each TTT step's layer in backward: ~2x less activation memory for "
                                   "one more layer forward (see `draftsmith estimate-memory`)")
    # optimization
    num_epochs: int = option(1, group="optimization", help="passes over the training data")
    max_steps: int | None = option(
        None, group="optimization", help="stop after this many optimizer steps (the lr schedule still spans "
                                         "--num-epochs)")
    batch_size: int = option(1, group="optimization", help="samples per micro-batch on each data-parallel rank")
    gradient_accumulation_steps: int = option(1, group="optimization", help="micro-batches per optimizer step")
    learning_rate: float = option(1e-4, group="optimization", help="peak AdamW learning rate")
    warmup_ratio: float = option(0.015, group="optimization", help="share of the steps with linear warmup")
    max_grad_norm: float = option(0.5, group="optimization", help="gradient clipping norm")
    weight_decay: float = option(0.0, group="optimization", help="AdamW weight decay")
    seed: int = option(0, group="optimization", help="seed of the draft's init and the data order")
    # run
    output_dir: str = option("outputs/eagle3", group="run", help="checkpoints step_<N>/, best/, final/ and metrics")
    save_interval: int = option(1000, group="run", help="save a checkpoint every N optimizer steps")
    eval_interval: int = option(1000, group="run",
                                help="evaluate on the held-out split every N steps (and keep best/ by it)")
    eval_holdout: int = option(0, group="run",
                               help="hold out N training samples as the eval split (instead of --eval-*-path)")
    eval_decode: int = option(0, group="run", help="also decode N held-out prompts with real speculative "
                                                   "decoding; best/ is then chosen by the decoded tau")
    eval_decode_tokens: int = option(64, group="run", help="new tokens per decoded prompt")
    early_stop: int | None = option(None, group="run", metavar="PATIENCE",
                                    help="stop after PATIENCE evaluations without a better held-out tau")
    log_interval: int = option(1, group="run", help="log metrics every N optimizer steps")
    resume: str | None = option(None, group="run", nargs="?", const="latest",
                                help="continue from the latest checkpoint in --output-dir (or the given folder)")
    tp_size: int = option(1, group="run", help="online: tensor-parallel size of the target")
    dtype: str = option("auto", group="run", help="target (online) / target embeddings dtype: " + DTYPE_HELP)
    device: str | None = option(None, group="run", help="default: this rank's CUDA device, else cpu")
    parallel: Literal["ddp", "fsdp"] = option(
        "ddp", group="run", help="how the draft is replicated under torchrun (fsdp = FSDP2 fully_shard)")
    report_to: Literal["none", "tensorboard", "wandb"] = option("none", group="run", help="metrics backend")
    trust_remote_code: bool = option(False, group="run", help="allow the target's own modeling code (opt-in)")
    progress: bool = option(True, group="run", help="progress bar")

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
        if self.num_workers is not None and self.num_workers < 0:
            raise InputError("must be >= 0", field="--num-workers")
        if self.prefetch_factor < 1:
            raise InputError("must be >= 1", field="--prefetch-factor")
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
        if not self.distill_temperature > 0:
            raise InputError("must be > 0", field="--distill-temperature")
        if not 0.0 <= self.ttt_curriculum <= 1.0:
            raise InputError("must be a share of the steps, 0 to 1", field="--ttt-curriculum")
        if self.parallel not in PARALLEL:
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
