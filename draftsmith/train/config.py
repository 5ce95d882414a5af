"""`TrainConfig`: every setting of a training run, with its default and its checks.

The dataclass is the single source of the `train` stage's settings: a `--config` file
(YAML, or JSON, which YAML reads too) holds any of its fields by name, `learning_rate` or
`learning-rate`; each value is converted to the field's type (`coerce`: PyYAML 1.1 reads
`1e-4` as a string, which becomes the float 0.0001) and an unknown key or a value of the
wrong type is an error naming the file, line and key. `to_yaml` writes the resolved config
(`train --print-config`) in the form `read_config_file` reads back. `validate()` checks the
values together and names the flag of a bad one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from draftsmith.errors import InputError
from draftsmith.target.dtype import NAMES as DTYPE_NAMES
from draftsmith.train.parallel import PARALLEL


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
    activation_checkpointing: bool = False        # recompute each TTT step's layer in backward (long contexts)
    report_to: str = "none"                       # none | tensorboard | wandb
    resume: str | None = None                     # "latest" or a checkpoint folder
    trust_remote_code: bool = False
    progress: bool = True

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


# ----- config files: YAML (or JSON, a subset of YAML) checked against the field types -------------

def _field_types() -> dict[str, object]:
    import typing

    return typing.get_type_hints(TrainConfig)


def _expect(kind) -> str:
    import typing

    args = [a for a in typing.get_args(kind) if a is not type(None)]
    inner = args[0] if args else kind
    label = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        inner, "a list of integers")
    return label + (" or null" if type(None) in typing.get_args(kind) else "")


def coerce(name: str, value, kind=None):
    """`value` as the type of field `name` (PyYAML reads `1e-4` as a string: it becomes 0.0001);
    ValueError when it is not one."""
    import typing

    kind = kind if kind is not None else _field_types()[name]
    args = typing.get_args(kind)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"expected {_expect(kind)}, got null")
    if args and type(None) in args:           # X | None
        kind = next(a for a in args if a is not type(None))
    origin = typing.get_origin(kind)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError(f"expected a list of integers, got {value!r}")
        return [coerce(name, v.strip() if isinstance(v, str) else v, int) for v in items if v != ""]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"expected {_expect(kind)}, got {value!r}")


def read_config_file(path: Path) -> dict:
    """The settings of a YAML / JSON file, keys as field names (`learning-rate` or `learning_rate`),
    values converted to the field types. Errors name the file, the line and the key."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=path, field="--config") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise InputError(f"invalid YAML: {e}", path=path, line=None if line is None else line + 1) from None
    if not isinstance(data, dict):
        raise InputError("expected a mapping of option names to values", path=path)
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}
    types = _field_types()
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in types:
            raise InputError("unknown training option", path=path, line=lines.get(str(key)), field=str(key))
        try:
            out[name] = coerce(name, value, types[name])
        except ValueError as e:
            raise InputError(str(e), path=path, line=lines.get(str(key)), field=str(key)) from None
    return out


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML that `read_config_file` reads back to an equal TrainConfig."""
    import yaml

    return yaml.safe_dump(asdict(cfg), sort_keys=False, default_flow_style=False)
