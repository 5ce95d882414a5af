"""`Eagle3Config`: the draft's shape, derived from the target's HF config, and its config.json ✱.

The draft is one Llama decoder layer that serving engines load as
`LlamaForCausalLMEagle3` (SGLang) / `Eagle3LlamaForCausalLM` (vLLM). Its rope settings
must be the target's: a draft saved with the default theta while the server runs the
target's theta silently loses acceptance, so they are copied, round-tripped and
written both as transformers 5 `rope_parameters` and as the `rope_theta` /
`rope_scaling` keys the engines read.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from draftsmith.draft import engine_keys, rope
from draftsmith.errors import InputError
from draftsmith.target.hf import default_aux_layers

ARCHITECTURE = "LlamaForCausalLMEagle3"
log = logging.getLogger(__name__)

# What `to_config_dict` writes (test_draft_model checks the two agree), plus the legacy rope
# spellings other writers use.
CONFIG_KEYS = frozenset({
    "architectures", "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "max_position_embeddings", "vocab_size",
    "draft_vocab_size", "target_hidden_size", "tie_word_embeddings", "attention_bias", "mlp_bias", "rope_theta",
    "rope_scaling", "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype",
    "use_cache", "eagle_aux_hidden_state_layer_ids", "eagle_config", "draftsmith", "partial_rotary_factor"})
EAGLE_CONFIG_KEYS = frozenset({"eagle_aux_hidden_state_layer_ids", "use_aux_hidden_state"})


@dataclass
class Eagle3Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int                      # the target's vocabulary (embeddings, t2d)
    draft_vocab_size: int                # the draft's lm_head rows (d2t)
    target_hidden_size: int              # fc input is 3 * target_hidden_size
    aux_layer_ids: list[int]             # HF output_hidden_states indices of the target (inputs of layers)
    target_num_hidden_layers: int
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None   # without rope_theta; None for plain rope
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    dtype: str = "bfloat16"              # config.json's dtype: always the saved tensors' (save_pretrained sets it)
    target_dtype: str = "bfloat16"       # the target's dtype: `export`'s default (bf16 when the target says nothing)

    def __post_init__(self):
        if self.draft_vocab_size > self.vocab_size:
            raise InputError(f"draft_vocab_size {self.draft_vocab_size} exceeds the target vocab_size "
                             f"{self.vocab_size}", field="draft_vocab_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}", field="num_key_value_heads")
        if self.hidden_act != "silu":
            # SGLang 0.5.23 srt/models/llama.py:116 and vLLM 0.33.0 model_executor/models/llama.py:112
            # raise "Unsupported activation" for any other MLP activation.
            raise InputError(f"hidden_act {self.hidden_act!r}: the EAGLE-3 draft layer of SGLang and vLLM is a "
                             "Llama layer with a SiLU MLP", field="hidden_act")
        problems = rope.scaling_problems(self.rope_scaling)
        if problems:
            raise InputError("rope SGLang or vLLM would not serve as trained:\n  " + "\n  ".join(m for m, _ in problems),
                             field="rope_scaling")
        if len(self.aux_layer_ids) != 3:
            raise InputError(f"EAGLE-3 fuses exactly 3 target layers, got {self.aux_layer_ids}",
                             field="aux_layer_ids")

    @property
    def rope_parameters(self) -> dict[str, Any]:
        """transformers 5 form: one dict with rope_type and rope_theta."""
        params = dict(self.rope_scaling or {"rope_type": "default"})
        params.pop("type", None)
        params.setdefault("rope_type", "default")
        params["rope_theta"] = self.rope_theta
        return params

    @classmethod
    def from_target_config(cls, hf_config: Any, *, draft_vocab_size: int | None = None,
                           aux_layer_ids: list[int] | None = None,
                           overrides: Mapping[str, Any] | None = None) -> "Eagle3Config":
        """Take from the target what the engines take from it — hidden size, heads, kv heads, head
        dim, MLP width, rope, vocab, RMSNorm eps, max positions — and nothing else: the draft is a
        Llama layer with SiLU whatever the target's activation (Gemma's `gelu_pytorch_tanh`,
        Phi-2's `gelu_new`, GPT-NeoX's `gelu`). `overrides` (the `--draft-model-config` JSON)
        replaces any field by name."""
        text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        get = (lambda k, d=None: text.get(k, d)) if isinstance(text, Mapping) else \
              (lambda k, d=None: getattr(text, k, d))
        num_layers = int(get("num_hidden_layers"))
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        vocab = int(get("vocab_size"))
        theta, scaling = _rope_of(get)
        scaling = rope.for_draft(theta, scaling)   # dynamic / longrope targets: the default rope (rope.py)
        values: dict[str, Any] = dict(
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size") or 4 * hidden),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            vocab_size=vocab,
            draft_vocab_size=int(draft_vocab_size or vocab),
            target_hidden_size=hidden,
            aux_layer_ids=list(aux_layer_ids) if aux_layer_ids is not None
            else default_aux_layers(num_layers),
            target_num_hidden_layers=num_layers,
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(get("max_position_embeddings") or 4096),
            rms_norm_eps=float(get("rms_norm_eps") or 1e-6),
            bos_token_id=get("bos_token_id"),
            eos_token_id=get("eos_token_id"),
            pad_token_id=get("pad_token_id"),
            target_dtype=target_dtype_name(get("dtype") or get("torch_dtype")),
        )
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in (overrides or {}).items():
            if key not in names:
                raise InputError(f"unknown draft config field (known: {', '.join(sorted(names))})", field=key)
            values[key] = value
        return cls(**values)

    def to_config_dict(self) -> dict[str, Any]:
        """config.json ✱ as SGLang and vLLM read it."""
        sglang_ids = [i - 1 for i in self.aux_layer_ids]  # SGLang captures at id + 1
        scaling = None
        if self.rope_scaling:
            scaling = {k: v for k, v in self.rope_scaling.items() if k != "rope_theta"}
            scaling.setdefault("rope_type", "default")
            scaling.setdefault("type", scaling["rope_type"])  # older readers look for "type"
        d: dict[str, Any] = {}
        d.update({
            "architectures": [ARCHITECTURE],
            "model_type": "llama",
            "num_hidden_layers": 1,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "draft_vocab_size": self.draft_vocab_size,
            "target_hidden_size": self.target_hidden_size,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "rope_theta": self.rope_theta,
            "rope_scaling": scaling,
            "rope_parameters": self.rope_parameters,
            # SGLang 0.5.23 reads a partial rotary only from this top-level key (models/llama.py:199),
            # vLLM 0.33 from rope_parameters (layers/rotary_embedding/__init__.py:69)
            **({"partial_rotary_factor": self.rope_parameters["partial_rotary_factor"]}
               if "partial_rotary_factor" in self.rope_parameters else {}),
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.dtype,
            "dtype": self.dtype,
            "use_cache": True,
            # vLLM: HF hidden_states indices (inputs of those layers), read as is.
            "eagle_aux_hidden_state_layer_ids": list(self.aux_layer_ids),
            # SGLang: layer ids whose *output* is captured (it captures the input of id + 1).
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": sglang_ids,
                             "use_aux_hidden_state": True},
            "draftsmith": {"aux_layer_ids": list(self.aux_layer_ids),
                           "target_num_hidden_layers": self.target_num_hidden_layers,
                           "target_dtype": self.target_dtype},
        })
        return d

    @classmethod
    def from_config_dict(cls, d: Mapping[str, Any], *, path: object = None,
                         target_layers: int | None = None) -> "Eagle3Config":
        """The config of a served folder. One without aux layer ids (SpecForge 0.2.0's export) gets what
        both engines capture then, HF hidden_states (2, L//2, L-3) of a `target_layers`-layer target
        (draftsmith/export.py's docstring cites the engine lines); without `target_layers` it is refused."""
        d = dict(d)
        refused = engine_keys.refused(d)
        if refused:
            raise InputError("config keys SGLang/vLLM act on that draftsmith does not implement (the engines would "
                             "serve another model than this one):\n  " + "\n  ".join(m for m, _ in refused),
                             path=path, field=refused[0][0].split(" = ")[0].removeprefix("config.json: "))
        for key in inert_keys(d):
            log.warning("%s: dropping config key %r: neither SGLang nor vLLM acts on it and draftsmith "
                        "does not write it", path or "config.json", key)
        archs = d.get("architectures") or []
        if ARCHITECTURE not in archs:
            raise InputError(f"not an EAGLE-3 draft config (architectures={archs})", path=path,
                             field="architectures")
        if int(d.get("num_hidden_layers", 1)) != 1:
            raise InputError("draftsmith drafts have exactly one decoder layer", path=path,
                             field="num_hidden_layers")
        ours = d.get("draftsmith") or {}
        aux = ours.get("aux_layer_ids") or d.get("eagle_aux_hidden_state_layer_ids")
        if aux is None and "eagle_config" in d:
            aux = [i + 1 for i in d["eagle_config"].get("eagle_aux_hidden_state_layer_ids", [])] or None
        if aux is None and target_layers:
            aux = [2, target_layers // 2, target_layers - 3]
            log.warning("%s: no aux layer ids; using the engines' default for a %d-layer target, HF hidden_states "
                        "%s (what SGLang and vLLM capture without them)", path or "config.json", target_layers, aux)
        theta, scaling = _rope_of(lambda k, default=None: d.get(k, default))
        try:
            hidden = int(d["hidden_size"])
            heads = int(d["num_attention_heads"])
            cfg = cls(
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
                vocab_size=int(d["vocab_size"]),
                draft_vocab_size=int(d.get("draft_vocab_size") or d["vocab_size"]),
                target_hidden_size=int(d.get("target_hidden_size") or hidden),
                aux_layer_ids=list(aux) if aux is not None else [],
                target_num_hidden_layers=int(ours.get("target_num_hidden_layers") or target_layers or 0),
                rope_theta=theta,
                rope_scaling=scaling,
                max_position_embeddings=int(d.get("max_position_embeddings") or 4096),
                rms_norm_eps=float(d.get("rms_norm_eps") or 1e-6),
                hidden_act=str(d.get("hidden_act") or "silu"),
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id"),
                pad_token_id=d.get("pad_token_id"),
                dtype=str(d.get("dtype") or d.get("torch_dtype") or "bfloat16"),
                target_dtype=target_dtype_name(ours.get("target_dtype")),
            )
        except KeyError as e:
            raise InputError("missing required key", path=path, field=e.args[0]) from None
        return cfg


def inert_keys(d: Mapping[str, Any]) -> list[str]:
    """Keys of a draft config.json that draftsmith neither writes nor rules on and the engines
    ignore (`eagle_config.` prefixed for the nested ones): readers drop them with a warning."""
    ruled = engine_keys.handled_keys() | {"original_max_position_embeddings"}   # the latter: rope.config_problems
    top = [k for k in d if k not in CONFIG_KEYS and k not in ruled]
    eagle = d.get("eagle_config") if isinstance(d.get("eagle_config"), Mapping) else {}
    nested = [f"eagle_config.{k}" for k in eagle
              if k not in EAGLE_CONFIG_KEYS and k not in engine_keys.handled_eagle_keys()]
    return sorted(top) + sorted(nested)


SERVED_DTYPES = ("bfloat16", "float16", "float32")


def target_dtype_name(value: Any) -> str:
    """The target config's `dtype` / `torch_dtype` (a torch.dtype or a name) as a served dtype name;
    bfloat16 when it says nothing or names no float dtype the engines serve."""
    name = str(value).removeprefix("torch.") if value is not None else ""
    return name if name in SERVED_DTYPES else "bfloat16"


def _rope_of(get) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling-without-theta) from transformers 5 `rope_parameters` or 4.x keys."""
    params = get("rope_parameters")
    if isinstance(params, Mapping) and "rope_theta" not in params and params \
            and all(isinstance(v, Mapping) for v in params.values()):
        # one rope per layer type (Gemma 3): the draft attends over the whole context, so it takes the
        # full-attention layers' rope (transformers 4's `rope_theta`; the sliding layers' was
        # `rope_local_base_freq`), whatever order the config file lists them in
        params = params.get("full_attention") or next(iter(params.values()))
    scaling = get("rope_scaling")
    theta = get("rope_theta")
    if isinstance(params, Mapping):
        theta = params.get("rope_theta", theta)
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    theta = float(theta if theta is not None else 10000.0)
    if scaling:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "type")}
    if not scaling or (scaling.get("rope_type") == "default" and len(scaling) == 1):
        scaling = None
    return theta, scaling
