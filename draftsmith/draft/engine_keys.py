"""Config keys that change what SGLang or vLLM compute with an EAGLE-3 draft.

A draft config.json is read by the engines as a LlamaConfig plus EAGLE-3 extras, and
both engines act on keys draftsmith's draft does not implement (an fc bias, extra norms, a
logit scale, ...). A checkpoint carrying one would be served as a different model than
the one trained and evaluated here, so every reader (export, inspect, the eval's draft
loader) refuses such a key with a non-neutral value, naming the key and the engines.
Keys outside this table and outside what `Eagle3Config.to_config_dict` writes change
nothing the engines compute: readers drop them with a warning and never write them back.

Each row was read in SGLang 0.5.23 (sglang/srt/...) and vLLM 0.33.0 (vllm/...), the
newest wheels on PyPI on 2026-12-01; tests/test_engine_conventions.py pins them.
The rope keys (`rope_scaling`, `rope_parameters`, `partial_rotary_factor`, top-level
`original_max_position_embeddings`) are draftsmith.draft.rope's; `hidden_act`,
`tie_word_embeddings`, `num_hidden_layers`, the aux ids and the dtype are checked by
draftsmith.export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

_BOTH = ("sglang", "vllm")


@dataclass(frozen=True)
class EngineKey:
    key: str                         # top-level key, or "eagle_config.<key>"
    neutral: tuple[Any, ...]         # values meaning what draftsmith computes (absent is always neutral)
    engines: tuple[str, ...]         # the engines that act on it
    effect: str                      # what they do with a non-neutral value, and where

    def is_neutral(self, value: Any) -> bool:
        return any(value is n or (type(value) is not bool and type(n) is not bool and value == n)
                   for n in self.neutral)


_OFF = (None, False)
ACTED_ON: tuple[EngineKey, ...] = (
    EngineKey("bias", _OFF, _BOTH,
              "SGLang gives fc a bias (srt/models/llama_eagle3.py:166) and o_proj one (srt/models/llama.py:339-341); "
              "vLLM gives o_proj a bias (model_executor/models/llama.py:268-271)"),
    EngineKey("attention_bias", _OFF, _BOTH,
              "vLLM gives qkv_proj (model_executor/models/llama_eagle3.py:85) and o_proj (llama.py:268-271) biases; "
              "SGLang o_proj (srt/models/llama.py:339-341)"),
    EngineKey("mlp_bias", _OFF, ("vllm",), "vLLM gives the MLP biases (model_executor/models/llama.py:305)"),
    EngineKey("norm_output", _OFF, _BOTH,
              "the next draft step gets the post-norm hidden (SGLang srt/models/llama_eagle3.py:207,268; "
              "vLLM model_executor/models/llama_eagle3.py:252,286)"),
    EngineKey("fc_norm", _OFF, _BOTH,
              "an RMSNorm per aux hidden state before fc (SGLang srt/models/llama_eagle3.py:185-196; "
              "vLLM model_executor/models/llama_eagle3.py:231-240)"),
    EngineKey("use_aux_norm", _OFF, ("sglang",),
              "SGLang's legacy name of fc_norm (srt/models/llama_eagle3.py:185-187)"),
    EngineKey("norm_before_fc", _OFF, _BOTH,
              "one RMSNorm over the fused aux states before fc (SGLang srt/models/llama_eagle3.py:173-175; "
              "vLLM model_executor/models/llama_eagle3.py:184-188)"),
    EngineKey("eagle_config.norm_before_fc", _OFF, _BOTH, "as norm_before_fc, which it overrides (same lines)"),
    EngineKey("num_aux_hidden_states", (None, 3), _BOTH,
              "fc fuses this many target layers (SGLang srt/models/llama_eagle3.py:157; vLLM "
              "model_executor/models/llama_eagle3.py:210-216); draftsmith fuses 3"),
    EngineKey("eagle_config.use_aux_hidden_state", (None, True), _BOTH,
              "false: no fc and no aux capture (vLLM model_executor/models/llama_eagle3.py:180-183; SGLang "
              "srt/model_executor/model_runner_components/spec_aux_hidden_state.py:189)"),
    EngineKey("norm_before_residual", _OFF, ("vllm",),
              "vLLM feeds the normed hidden as the residual (model_executor/models/llama_eagle3.py:101-104)"),
    EngineKey("logit_scale", (None, 1, 1.0), ("vllm",),
              "vLLM scales the draft logits (model_executor/models/llama_eagle3.py:328-337)"),
    EngineKey("final_logit_softcapping", (None,), ("sglang",),
              "SGLang soft-caps the draft logits (srt/layers/logits_processor.py:494)"),
    EngineKey("rotary_pct", (None, 1, 1.0), ("vllm",),
              "vLLM reads it as partial_rotary_factor (transformers_utils/config.py:675)"),
    EngineKey("rotary_emb_fraction", (None, 1, 1.0), ("vllm",),
              "vLLM reads it as partial_rotary_factor (transformers_utils/config.py:675)"),
    EngineKey("rope_is_neox_style", (None, True), ("sglang",),
              "false: SGLang rotates interleaved pairs (srt/models/llama.py:335)"),
    EngineKey("is_causal", (None, True), ("vllm",),
              "false: vLLM attends bidirectionally (model_executor/models/llama.py:280)"),
    EngineKey("quantization_config", (None,), _BOTH,
              "the engines quantize the draft with it (vLLM model_executor/models/utils.py:985-1004)"),
)
_BY_KEY = {k.key: k for k in ACTED_ON}


def _layer_types_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, list) and all(t == "full_attention" for t in value)):
        return None
    return ("vLLM gives the draft layer sliding-window attention when layer_types[0] is "
            "'sliding_attention' (model_executor/models/llama.py:186-204); draftsmith's draft attends fully")


def refused(config: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """(message, engines) for every key here set to a value draftsmith does not compute."""
    out: list[tuple[str, tuple[str, ...]]] = []
    eagle = config.get("eagle_config") if isinstance(config.get("eagle_config"), Mapping) else {}
    for rule in ACTED_ON:
        scope, _, name = rule.key.rpartition(".")
        source = eagle if scope == "eagle_config" else config
        if name in source and not rule.is_neutral(source[name]):
            engines = " and ".join({"sglang": "SGLang", "vllm": "vLLM"}[e] for e in rule.engines)
            out.append((f"config.json: {rule.key} = {source[name]!r}: acted on by {engines}, not implemented by "
                        f"draftsmith's draft — {rule.effect}", rule.engines))
    problem = _layer_types_problem(config.get("layer_types"))
    if problem:
        out.append((f"config.json: layer_types = {config.get('layer_types')!r}: acted on by vLLM, not implemented "
                    f"by draftsmith's draft — {problem}", ("vllm",)))
    return out


def handled_keys() -> set[str]:
    """Top-level keys this table rules on (refused when non-neutral, else harmless)."""
    return {k.key for k in ACTED_ON if "." not in k.key} | {"layer_types"}


def handled_eagle_keys() -> set[str]:
    return {k.key.split(".", 1)[1] for k in ACTED_ON if k.key.startswith("eagle_config.")}
