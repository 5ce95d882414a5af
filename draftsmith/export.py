"""`draftsmith export`: validate an EAGLE-3 checkpoint and write the folder SGLang and vLLM load.

Serving engines fail quietly: SGLang's `LlamaForCausalLMEagle3.load_weights` skips any
tensor name it does not know and leaves the parameter at random init, a tied
`tie_word_embeddings` swaps the draft lm_head for the target embeddings, and a wrong aux
layer id feeds the draft features from the wrong depth. Every one of those serves
garbage at full speed. So the checks here run on every folder we write (and the
trainer's `save_pretrained` output passes through them too): exact tensor names,
shapes and dtypes, a d2t that maps into the target vocab without duplicates, and a
config consistent with itself and with the target.

Aux layer ids — the engines read the same three layers in two forms (checked against
their loaders):
- SGLang: `EAGLEWorker` passes `hf_config.eagle_config["eagle_aux_hidden_state_layer_ids"]`
  to the target's `set_eagle3_layers_to_capture`, which stores `val + 1` in
  `layers_to_capture` (python/sglang/srt/models/llama.py: "for the ith layer, it takes
  the output of the (i-1)th layer") and captures `hidden_states + residual` *before*
  running layer `val + 1`. So SGLang id j = output of layer j = HF hidden_states[j + 1].
- vLLM: `gpu_model_runner._get_eagle3_aux_layers_from_config` reads the draft config's
  top-level `eagle_aux_hidden_state_layer_ids` as is and the target model
  (vllm/model_executor/models/llama.py) appends `hidden_states + residual` before layer
  `idx` for `idx in aux_hidden_state_layers`. So vLLM id i = input of layer i = HF
  hidden_states[i]. Without ids both engines capture HF hidden_states (2, L//2, L-3): SGLang
  0.5.23 srt/models/llama.py:933-936 stores that default in `layers_to_capture` without the + 1,
  vLLM 0.33.0 v1/worker/gpu_model_runner.py:5180-5186 falls back to
  model_executor/models/interfaces.py:1751-1772. A folder without them (SpecForge's export) is
  served with those layers: `inspect` warns, and refuses only where one engine's ids are given and
  the other engine's default differs from them.
draftsmith stores HF hidden_states indices, writes them top-level for vLLM and minus one
in `eagle_config` for SGLang.

Weight names follow SGLang python/sglang/srt/models/llama_eagle3.py (`fc`, `midlayer.*`,
`norm`, `lm_head`, `d2t` turned into hot_token_id, `t2d` skipped) and vLLM
vllm/model_executor/models/llama_eagle3.py (`midlayer.` renamed to `layers.0.`, `d2t` to
`draft_id_to_target_id`, `embed_tokens` optional).

Every problem names the engines it breaks (`Problem.engines`): a full-vocabulary draft that
ships `d2t` loads in SGLang (identity) but vLLM refuses it, so `inspect` reports per engine and
`export` writes only folders both load. The engine rules are pinned, with file:line, in
tests/test_engine_conventions.py (SGLang 0.5.23, vLLM 0.33.0).

Why one file of ~520 lines: the checks and the writer are one contract (every folder written
here passes the same checks `inspect` and `eval` run), and a reader follows each engine rule
from the check to the tensor it guards without changing files.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from draftsmith import config as typed_config
from draftsmith.config import option
from draftsmith.draft import engine_keys, rope
from draftsmith.draft.config import inert_keys
from draftsmith.errors import InputError
from draftsmith.fsutil import atomic_path, read_json_object, write_json_atomic

ARCHITECTURE = "LlamaForCausalLMEagle3"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FLOAT_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
DTYPE_NAMES = {v: k for k, v in FLOAT_DTYPES.items()}
ENGINES = ("sglang", "vllm")
ENGINE_NAMES = {"sglang": "SGLang", "vllm": "vLLM"}


class Problem(str):
    """An error message that also knows which engines it breaks (a plain str everywhere else)."""

    engines: tuple[str, ...]

    def __new__(cls, message: str, engines: tuple[str, ...] = ENGINES) -> "Problem":
        self = super().__new__(cls, message)
        self.engines = tuple(engines)
        return self


@dataclass
class CheckReport:
    """What a checkpoint folder holds and everything that would stop it loading correctly."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], str]]   # name -> (shape, dtype)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    d2t_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def engines(self) -> dict[str, list[str]]:
        """Per engine, the problems that stop it serving the draft as trained ([] = it will)."""
        return {e: [str(p) for p in self.errors if e in getattr(p, "engines", ENGINES)] for e in ENGINES}

    def raise_if_invalid(self) -> None:
        if self.errors:
            lines = "\n  ".join(self.errors)
            raise InputError(f"checkpoint will not load correctly ({len(self.errors)} problem(s)):\n  {lines}",
                             path=self.path)


def expected_tensors(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor the engines read, with its shape, derived from config.json alone.

    `d2t`/`t2d` only for a reduced draft vocabulary: with draft_vocab_size == vocab_size vLLM
    0.33.0 has no parameter to load d2t into (llama_eagle3.py:339-345) and SGLang uses the
    identity when none comes."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    target_hidden = int(config.get("target_hidden_size") or hidden)
    draft_vocab = int(config.get("draft_vocab_size") or config["vocab_size"])
    vocab = int(config["vocab_size"])
    attn = "midlayer.self_attn."
    mlp = "midlayer.mlp."
    mapping = {"d2t": (draft_vocab,), "t2d": (vocab,)} if draft_vocab < vocab else {}
    return {
        "fc.weight": (hidden, 3 * target_hidden),
        "midlayer.input_layernorm.weight": (hidden,),
        "midlayer.hidden_norm.weight": (hidden,),
        "midlayer.post_attention_layernorm.weight": (hidden,),
        attn + "q_proj.weight": (heads * head_dim, 2 * hidden),
        attn + "k_proj.weight": (kv_heads * head_dim, 2 * hidden),
        attn + "v_proj.weight": (kv_heads * head_dim, 2 * hidden),
        attn + "o_proj.weight": (hidden, heads * head_dim),
        mlp + "gate_proj.weight": (inter, hidden),
        mlp + "up_proj.weight": (inter, hidden),
        mlp + "down_proj.weight": (hidden, inter),
        "norm.weight": (hidden,),
        "lm_head.weight": (draft_vocab, hidden),
        **mapping,
    }


OPTIONAL_TENSORS = ("embed_tokens.weight",)


def target_summary(target_config: Any) -> dict[str, Any]:
    """The target facts a draft must agree with, from an HF config object or dict."""
    from draftsmith.draft.config import Eagle3Config

    cfg = Eagle3Config.from_target_config(target_config)
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.target_num_hidden_layers, "rope_theta": cfg.rope_theta,
            "rope_scaling": cfg.rope_scaling}


def _rope_scaling_core(scaling: Any) -> dict[str, Any] | None:
    """rope_scaling without the keys that only repeat the type (for comparisons)."""
    if not scaling:
        return None
    core = {k: v for k, v in dict(scaling).items() if k not in ("type", "rope_theta")}
    core.setdefault("rope_type", dict(scaling).get("type", "default"))
    return None if core == {"rope_type": "default"} else core


def check_config(config: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """Errors and warnings of config.json on its own and against the target summary."""
    errors: list[str] = []
    warnings: list[str] = []

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in config:
            errors.append(f"config.json: missing {key!r}")
            return None
        value = config[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            errors.append(f"config.json: {key!r} = {value!r} has the wrong type")
            return None
        return value

    archs = need("architectures", list)
    if archs is not None and archs != [ARCHITECTURE]:
        errors.append(f"config.json: architectures = {archs}, SGLang and vLLM need [{ARCHITECTURE!r}]")
    if config.get("model_type") != "llama":
        errors.append(f"config.json: model_type = {config.get('model_type')!r}, the engines parse the draft "
                      "config as a LlamaConfig: write 'llama'")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "draft_vocab_size"):
        need(key, int)
    if config.get("num_hidden_layers", 1) != 1:
        errors.append(f"config.json: num_hidden_layers = {config.get('num_hidden_layers')}: SGLang and vLLM "
                      "name extra draft layers differently, only one layer exports to both")
    if config.get("tie_word_embeddings", True) is not False:
        errors.append(Problem("config.json: tie_word_embeddings must be false: SGLang replaces the draft lm_head "
                              "with the target embeddings when it is true (and the default is true)",
                              engines=("sglang",)))
    vocab, draft_vocab = config.get("vocab_size"), config.get("draft_vocab_size")
    if isinstance(vocab, int) and isinstance(draft_vocab, int) and draft_vocab > vocab:
        errors.append(f"config.json: draft_vocab_size {draft_vocab} > vocab_size {vocab}")
    if config.get("hidden_act", "silu") != "silu":
        errors.append(f"config.json: hidden_act = {config.get('hidden_act')!r}; the engines' Llama MLP is silu")
    errors.extend(Problem(message, engines) for message, engines in engine_keys.refused(config))
    errors.extend(Problem(message, engines) for message, engines in rope.config_problems(config))
    inert = inert_keys(config)
    if inert:
        warnings.append(f"config.json: {', '.join(inert)}: neither engine acts on these keys; draftsmith drops them "
                        "on export")
    theta = need("rope_theta", (int, float))
    if "rope_scaling" not in config:
        message = ("config.json: missing 'rope_scaling': SGLang and vLLM read the top-level rope keys (not "
                   "transformers 5's rope_parameters) and run plain rope without it")
        if target is not None and target["rope_scaling"] is not None:
            errors.append(f"{message}; the target scales rope ({target['rope_scaling']})")
        else:
            warnings.append(f"{message}{'' if target is not None else ' (no target given to compare)'}")

    top = config.get("eagle_aux_hidden_state_layer_ids")
    eagle = config.get("eagle_config")
    sglang_ids = eagle.get("eagle_aux_hidden_state_layer_ids") if isinstance(eagle, Mapping) else None
    default = None if target is None else [2, target["num_hidden_layers"] // 2, target["num_hidden_layers"] - 3]
    if top is None or sglang_ids is None:
        errors_, warnings_ = _default_aux_layers(top, sglang_ids, default)
        errors.extend(errors_)
        warnings.extend(warnings_)
    else:
        if not _int_list(top, 3):
            errors.append(f"config.json: eagle_aux_hidden_state_layer_ids = {top!r}; vLLM reads three target "
                          "layer ids here (HF hidden_states indices)")
        if not _int_list(sglang_ids, 3):
            errors.append(f"config.json: eagle_config.eagle_aux_hidden_state_layer_ids = {sglang_ids!r}; SGLang "
                          "reads three layer ids here")
        if _int_list(top, 3) and _int_list(sglang_ids, 3) and [i + 1 for i in sglang_ids] != list(top):
            errors.append(f"config.json: SGLang ids {sglang_ids} + 1 != vLLM ids {top}: SGLang captures the "
                          "output of layer id (input of id + 1), vLLM the input of layer id")
    hf_ids = list(top) if _int_list(top, 3) else [i + 1 for i in sglang_ids] if _int_list(sglang_ids, 3) else None
    if hf_ids is not None:
        if len(set(hf_ids)) != 3 or sorted(hf_ids) != hf_ids:
            errors.append(f"config.json: aux layer ids {hf_ids} must be three distinct increasing layers")
        if min(hf_ids) < 0:
            errors.append(f"config.json: aux layer ids {hf_ids}: negative; 0 (the embedding output, SGLang id -1) "
                          "is the lowest both engines capture")

    if target is not None:
        if isinstance(vocab, int) and vocab != target["vocab_size"]:
            errors.append(f"config.json: vocab_size {vocab} != target vocab_size {target['vocab_size']}")
        th = config.get("target_hidden_size") or config.get("hidden_size")
        if isinstance(th, int) and th != target["hidden_size"]:
            errors.append(f"config.json: target_hidden_size {th} != target hidden_size {target['hidden_size']}")
        if hf_ids is not None and max(hf_ids) >= target["num_hidden_layers"]:
            errors.append(f"config.json: aux layer ids {hf_ids} out of range for a target with "
                          f"{target['num_hidden_layers']} layers (the last usable input is layer "
                          f"{target['num_hidden_layers'] - 1})")
        if theta is not None and not math.isclose(float(theta), float(target["rope_theta"]), rel_tol=1e-6):
            errors.append(f"config.json: rope_theta {theta} != target rope_theta {target['rope_theta']}")
        if "rope_scaling" in config and _rope_scaling_core(config["rope_scaling"]) != _rope_scaling_core(
                target["rope_scaling"]):
            errors.append(f"config.json: rope_scaling {config.get('rope_scaling')} != target "
                          f"{target['rope_scaling']}")
    return errors, warnings


def _default_aux_layers(top: Any, sglang_ids: Any, default: list[int] | None) -> tuple[list[str], list[str]]:
    """A config that leaves one or both engines' aux ids out: that engine captures its default, HF
    hidden_states (2, L//2, L-3) (module docstring). Refused only for an engine whose default differs
    from the ids the other engine is given; otherwise a warning naming the layers served."""
    errors: list[str] = []
    warnings: list[str] = []
    where = "HF hidden_states (2, L//2, L-3)" + (f" = {default}" if default else "")
    if top is None and sglang_ids is None:
        warnings.append(f"config.json: no aux layer ids (eagle_aux_hidden_state_layer_ids, eagle_config): SGLang "
                        f"and vLLM both capture their default, {where}; serve it only if the draft was trained on "
                        "those layers (SpecForge's default)")
        return errors, warnings
    given, missing, hf = (("vLLM", "sglang", top) if sglang_ids is None else
                          ("SGLang", "vllm", [i + 1 for i in sglang_ids] if _int_list(sglang_ids, 3) else None))
    key = "eagle_config.eagle_aux_hidden_state_layer_ids" if missing == "sglang" else "eagle_aux_hidden_state_layer_ids"
    if hf is None or not _int_list(hf, 3):
        errors.append(f"config.json: {given}'s aux layer ids {top if missing == 'sglang' else sglang_ids!r} are "
                      "not three layer ids")
    elif default is not None and list(hf) != default:
        errors.append(Problem(f"config.json: missing {key}: {ENGINE_NAMES[missing]} captures its default {where}, "
                              f"but {given} is given HF hidden_states {list(hf)}", engines=(missing,)))
    else:
        warnings.append(f"config.json: missing {key}: {ENGINE_NAMES[missing]} captures its default, {where}"
                        + ("" if default is not None else "; no target given to compare with the ids "
                           f"{given} is given (HF hidden_states {list(hf)})"))
    return errors, warnings


def _config_dtype(config: Any) -> str | None:
    """`dtype`, else `torch_dtype`, of a config dict or object, as a name (SGLang 0.5.23's order:
    srt/configs/model_config.py:2291)."""
    get = config.get if isinstance(config, Mapping) else (lambda k: getattr(config, k, None))
    value = get("dtype") or get("torch_dtype")
    return str(value).removeprefix("torch.") if value is not None else None


def _int_list(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(i, int) and not isinstance(i, bool) for i in value))


def check_tensors(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], dict]:
    """Errors, warnings and a d2t summary for the weights against config.json."""
    errors: list[str] = []
    warnings: list[str] = []
    try:
        expected = expected_tensors(config)
    except (KeyError, TypeError, ValueError) as e:
        return [f"config.json: cannot derive tensor shapes ({e!r})"], warnings, {}
    for name, shape in expected.items():
        if name not in tensors:
            errors.append(f"{WEIGHTS_FILE}: missing tensor {name!r} (shape {list(shape)}); SGLang would leave "
                          "it at random init")
        elif tuple(tensors[name].shape) != shape:
            errors.append(f"{WEIGHTS_FILE}: {name!r} has shape {list(tensors[name].shape)}, config.json "
                          f"implies {list(shape)}")
    vocab, hidden = int(config["vocab_size"]), int(config["hidden_size"])
    draft_vocab = int(config.get("draft_vocab_size") or vocab)
    if "embed_tokens.weight" not in tensors:
        # vLLM 0.33.0 V1 model runner: the target's embeddings are shared with the draft only when
        # pipeline parallelism is 1 (v1/spec_decode/llm_base_proposer.py:1424-1508).
        warnings.append("no embed_tokens.weight: vLLM with pipeline parallelism > 1 (V1 model runner) does not share "
                        "the target's embeddings with the draft; export with --include-embeddings to serve there")
    for name in tensors:
        if name in expected:
            continue
        if name == "d2t" and draft_vocab == vocab:
            errors.append(Problem(
                f"{WEIGHTS_FILE}: 'd2t' in a full-vocabulary draft (draft_vocab_size == vocab_size == {vocab}): "
                "vLLM creates no draft_id_to_target_id parameter then, renames d2t to it and refuses to load "
                "(\"There is no module or parameter named 'draft_id_to_target_id'\"); `draftsmith export` "
                "drops it (SGLang uses the identity without it)", engines=("vllm",)))
            continue
        if name == "t2d" and draft_vocab == vocab:
            warnings.append(f"{WEIGHTS_FILE}: 't2d' in a full-vocabulary draft: both engines skip it")
            continue
        if name == "embed_tokens.weight":
            if tuple(tensors[name].shape) != (vocab, hidden):
                errors.append(f"{WEIGHTS_FILE}: {name!r} has shape {list(tensors[name].shape)}, expected "
                              f"{[vocab, hidden]}")
            continue
        errors.append(f"{WEIGHTS_FILE}: unknown tensor {name!r}: SGLang drops names it does not know (serving "
                      "without it), vLLM's loader refuses them")

    float_dtypes = set()
    for name, t in tensors.items():
        if name in ("d2t", "t2d"):
            continue
        if t.dtype not in FLOAT_DTYPES:
            errors.append(f"{WEIGHTS_FILE}: {name!r} has dtype {t.dtype}, expected a float dtype")
            continue
        float_dtypes.add(FLOAT_DTYPES[t.dtype])
        if not torch.isfinite(t).all():
            errors.append(f"{WEIGHTS_FILE}: {name!r} holds NaN or inf")
    if len(float_dtypes) > 1:
        errors.append(f"{WEIGHTS_FILE}: mixed weight dtypes {sorted(float_dtypes)}; the engines load one dtype")
    declared = _config_dtype(config)
    if config.get("dtype") and config.get("torch_dtype") and config["dtype"] != config["torch_dtype"]:
        errors.append(f"config.json: dtype {config['dtype']!r} != torch_dtype {config['torch_dtype']!r}: SGLang "
                      "reads dtype first, older transformers torch_dtype")
    if len(float_dtypes) == 1:
        stored = next(iter(float_dtypes))
        if declared and declared != stored:
            errors.append(f"config.json declares dtype {declared!r} but the weights are {stored}: the engines "
                          "serve the declared dtype")
        if stored == "float32":
            warnings.append(f"{WEIGHTS_FILE}: float32 weights: SGLang's --dtype auto serves a float32 draft config "
                            "as float16; `draftsmith export` writes the target's dtype unless --dtype float32")

    summary: dict[str, Any] = {}
    d2t, t2d = tensors.get("d2t"), tensors.get("t2d")
    if draft_vocab == vocab and draft_vocab:
        summary = {"draft_vocab_size": draft_vocab, "target_id_min": 0, "target_id_max": vocab - 1,
                   "identity": True}
    elif d2t is not None and tuple(d2t.shape) == (draft_vocab,):
        if d2t.dtype != torch.int64:
            errors.append(f"{WEIGHTS_FILE}: 'd2t' has dtype {d2t.dtype}, expected int64 (target_id = draft_id + "
                          "d2t[draft_id])")
        target_ids = torch.arange(draft_vocab) + d2t.long()
        bad = ((target_ids < 0) | (target_ids >= vocab)).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            errors.append(f"{WEIGHTS_FILE}: 'd2t' maps draft id {i} to target id {int(target_ids[i])}, outside "
                          f"the target vocab [0, {vocab}) ({bad.numel()} such ids)")
        elif target_ids.unique().numel() != draft_vocab:
            errors.append(f"{WEIGHTS_FILE}: 'd2t' maps {draft_vocab - target_ids.unique().numel()} draft ids onto "
                          "target ids already used: two draft tokens would produce the same target token")
        else:
            summary = {"draft_vocab_size": draft_vocab, "target_id_min": int(target_ids.min()),
                       "target_id_max": int(target_ids.max()),
                       "identity": bool((d2t == 0).all())}
            if t2d is not None and tuple(t2d.shape) == (vocab,):
                if t2d.dtype != torch.bool:
                    errors.append(f"{WEIGHTS_FILE}: 't2d' has dtype {t2d.dtype}, expected bool")
                elif int(t2d.sum()) != draft_vocab or not bool(t2d[target_ids].all()):
                    errors.append(f"{WEIGHTS_FILE}: 't2d' does not mark exactly the target ids that d2t maps to")
    return errors, warnings, summary


def read_checkpoint(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json and the safetensors weights of a folder (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise InputError("not a checkpoint folder", path=folder)
    if not cfg_path.exists():
        raise InputError("missing config.json", path=folder)
    config = read_json_object(cfg_path)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {found}: draftsmith never unpickles weights; save them as safetensors)" if found else ""
        raise InputError(f"missing {WEIGHTS_FILE}{hint}", path=folder)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise InputError(f"unreadable safetensors file ({e})", path=weights) from None
    return config, tensors


def load_target_config(target_model_path: str | Path, trust_remote_code: bool = False) -> Any:
    from draftsmith.errors import DraftsmithError
    from draftsmith.target.loading import load_config

    try:
        return load_config(target_model_path, trust_remote_code)
    except DraftsmithError as e:
        raise InputError(f"cannot read the target config ({e.__cause__})", path=target_model_path) from None


def check_folder(folder: str | Path, target_config: Any = None) -> CheckReport:
    """Validate a checkpoint folder as the engines will read it; never raises for content problems."""
    config, tensors = read_checkpoint(folder)
    target = target_summary(target_config) if target_config is not None else None
    errors, warnings = check_config(config, target)
    if not any("cannot derive" in e for e in errors):
        t_errors, t_warnings, summary = check_tensors(config, tensors)
    else:
        t_errors, t_warnings, summary = [], [], {}
    return CheckReport(path=Path(folder), config=config,
                       tensors={k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in tensors.items()},
                       errors=errors + t_errors, warnings=warnings + t_warnings, d2t_summary=summary)


@dataclass
class ExportConfig:
    """The `export` stage's settings (draftsmith/config.py: its flags, defaults and config-file keys)."""

    checkpoint: Path = option(positional=True, help="draftsmith checkpoint folder (config.json + model.safetensors)")
    output_dir: Path = option(deprecated=("--output",), help="folder to write the served draft to")
    target_model_path: Path | None = option(None, help="target HF folder: checks vocab/hidden/rope/layer ids "
                                                       "against it, copies its rope, and is the source of embeddings")
    dtype: str | None = option(None, choices=tuple(sorted(DTYPE_NAMES)),
                               help="dtype of the served weights (default: the target's dtype, from "
                                    "--target-model-path or recorded at training; bfloat16 when the target "
                                    "declares none)")
    include_embeddings: bool = option(False, help="also write the target's embed_tokens.weight (engines share "
                                                  "the target's by default)")
    trust_remote_code: bool = option(False, help="allow custom code in the target config")

    def validate(self) -> None:
        if Path(self.output_dir).resolve() == Path(self.checkpoint).resolve():
            raise InputError("must differ from the checkpoint folder", field="--output-dir")


CONFIG = ExportConfig


def export_checkpoint(cfg: ExportConfig) -> CheckReport:
    """Normalize a draftsmith checkpoint into the served form, validate it, write it atomically."""
    from draftsmith.draft.config import Eagle3Config, target_dtype_name

    config, tensors = read_checkpoint(cfg.checkpoint)
    draft_cfg = Eagle3Config.from_config_dict(config, path=Path(cfg.checkpoint) / CONFIG_FILE)
    target_config = None
    if cfg.target_model_path is not None:
        target_config = load_target_config(cfg.target_model_path, cfg.trust_remote_code)
        target = Eagle3Config.from_target_config(target_config)
        draft_cfg.rope_theta, draft_cfg.rope_scaling = target.rope_theta, target.rope_scaling
        draft_cfg.target_num_hidden_layers = target.target_num_hidden_layers
    dtype = cfg.dtype or (target_dtype_name(_config_dtype(target_config)) if target_config is not None
                          else draft_cfg.target_dtype)
    if dtype not in DTYPE_NAMES:
        raise InputError(f"unknown dtype {dtype!r} (choose from {sorted(DTYPE_NAMES)})", field="dtype")
    tensors = {k: v.to(DTYPE_NAMES[dtype]) if v.dtype in FLOAT_DTYPES else v for k, v in tensors.items()}
    draft_cfg.dtype = dtype
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if draft_cfg.draft_vocab_size == draft_cfg.vocab_size:
        d2t = tensors.pop("d2t", None)
        tensors.pop("t2d", None)
        if d2t is not None and bool(d2t.any()):
            raise InputError("a full-vocabulary draft with a non-identity d2t: vLLM cannot load a vocabulary "
                             "mapping for it", path=Path(cfg.checkpoint) / WEIGHTS_FILE, field="d2t")
    if "d2t" in tensors and tensors["d2t"].dtype != torch.int64 and not tensors["d2t"].is_floating_point():
        tensors["d2t"] = tensors["d2t"].long()
    if cfg.include_embeddings:
        if "embed_tokens.weight" not in tensors:
            if target_config is None:
                raise InputError("--include-embeddings needs --target-model-path (the checkpoint has no "
                                 "embed_tokens.weight)", field="include_embeddings")
            tensors["embed_tokens.weight"] = _target_embeddings(cfg.target_model_path, cfg.trust_remote_code) \
                .to(next(v.dtype for k, v in tensors.items() if k == "fc.weight"))
    else:
        tensors.pop("embed_tokens.weight", None)

    out_config = draft_cfg.to_config_dict()
    target = target_summary(target_config) if target_config is not None else None
    errors, warnings = check_config(out_config, target)
    t_errors, t_warnings, summary = check_tensors(out_config, tensors)
    report = CheckReport(path=Path(cfg.output_dir), config=out_config,
                         tensors={k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in tensors.items()},
                         errors=errors + t_errors, warnings=warnings + t_warnings, d2t_summary=summary)
    if report.errors:
        report.path = Path(cfg.checkpoint)
        report.raise_if_invalid()
    _write_folder(Path(cfg.output_dir), out_config, tensors)
    return report


def _target_embeddings(target_model_path: Path, trust_remote_code: bool) -> torch.Tensor:
    from draftsmith.target.loading import load_causal_lm

    model = load_causal_lm(target_model_path, torch.float32, trust_remote_code)
    return model.get_input_embeddings().weight.detach().clone()


def _write_folder(output: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    output.mkdir(parents=True, exist_ok=True)
    with atomic_path(output / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json_atomic(output / CONFIG_FILE, config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    typed_config.add_arguments(parser, ExportConfig)


def run(args: argparse.Namespace) -> int:
    cfg = typed_config.from_args(ExportConfig, args)
    cfg.validate()
    report = export_checkpoint(cfg)
    for w in report.warnings:
        print(f"warning: {w}")
    served = report.config
    print(f"exported {cfg.checkpoint} -> {cfg.output_dir}: {len(report.tensors)} tensors, "
          f"draft vocab {served['draft_vocab_size']} of {served['vocab_size']}, dtype {served['torch_dtype']}, "
          f"aux layers vLLM {served['eagle_aux_hidden_state_layer_ids']} / "
          f"SGLang {served['eagle_config']['eagle_aux_hidden_state_layer_ids']}")
    return 0
