"""The draft's rope: which rope types SGLang and vLLM serve exactly as draftsmith trains them.

The draft trains with transformers' rope functions (draftsmith.draft.model.rotary_tables)
and each engine rebuilds the rope from the draft's config.json with its own code
(SGLang 0.5.23 srt/layers/rotary_embedding/factory.py:125-433, vLLM 0.33.0
model_executor/layers/rotary_embedding/__init__.py:32-330). Read against that code:

| rope_type | SGLang 0.5.23 | vLLM 0.33.0 | draftsmith |
|---|---|---|---|
| default | same | same | served |
| linear | same (positions / factor) | same | served |
| llama3 | same | same (needs all four keys) | served |
| yarn | same, but ignores `attention_factor` (reads `attn_factor`, `extrapolation_factor`) | same, reads `attention_factor` | served without attention_factor / attn_factor / extrapolation_factor |
| dynamic | base always scaled by (f²−f+1)^(d/(d−2)) (rope_variant.py:880-887) | unscaled up to max positions (dynamic_ntk_scaling_rope.py:58-66) | a dynamic target's draft uses the default rope; a dynamic draft is refused |
| longrope | long factors for a whole batch once any position > original max (rope_variant.py:140-147) | long factors at every position when max_model_len > original max (phi3_long_rope_scaled_rope.py:49-55) | a longrope target's draft uses the default rope; a longrope draft is refused |
| anything else (mrope, deepseek_yarn, ...) | | | refused |

The draft's rope only has to be the same in training and serving (the engines build it
from the draft's own config.json, never the target's), so for a target whose rope the
engines would serve differently the draft takes the plain rope at the target's theta: both
engines serve that identically at every position. `partial_rotary_factor` is implemented
(SGLang reads the top-level key, srt/models/llama.py:199-200; vLLM the one in
rope_parameters, rotary_embedding/__init__.py:66-72): both must agree.
"""

from __future__ import annotations

from typing import Any, Mapping

from draftsmith.errors import InputError

_BOTH = ("sglang", "vllm")
_COMMON = {"rope_type", "partial_rotary_factor"}
# rope_type -> (keys it may carry, keys vLLM 0.33.0 requires: a KeyError there otherwise)
SERVED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "default": (frozenset(_COMMON), frozenset()),
    "linear": (frozenset(_COMMON | {"factor"}), frozenset({"factor"})),
    "llama3": (frozenset(_COMMON | {"factor", "low_freq_factor", "high_freq_factor",
                                    "original_max_position_embeddings"}),
               frozenset({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})),
    "yarn": (frozenset(_COMMON | {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                                  "mscale", "mscale_all_dim", "truncate"}),
             frozenset({"factor", "original_max_position_embeddings"})),
}
# rope types a target may have whose draft takes the default rope instead (see the table above)
REPLACED = {
    "dynamic": ("SGLang scales the rope base at every position (srt/layers/rotary_embedding/rope_variant.py:"
                "880-887) while vLLM and transformers do not below max positions (vLLM model_executor/layers/"
                "rotary_embedding/dynamic_ntk_scaling_rope.py:58-66)", ("sglang",)),
    "longrope": ("vLLM uses the long factors at every position once max_model_len > original_max_position_embeddings "
                 "(model_executor/layers/rotary_embedding/phi3_long_rope_scaled_rope.py:49-55), SGLang for a whole "
                 "batch once any position exceeds it (srt/layers/rotary_embedding/rope_variant.py:140-147), "
                 "transformers per forward pass", _BOTH),
}


def for_draft(theta: float, scaling: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The draft's rope scaling for a target rope: the target's where both engines serve it as
    trained, the default rope (same theta, same partial rotary) for dynamic and longrope;
    InputError for types no engine-identical form exists for."""
    if not scaling:
        return None
    rope_type = scaling.get("rope_type", "default")
    if rope_type in REPLACED:
        partial = scaling.get("partial_rotary_factor")
        return {"rope_type": "default", "partial_rotary_factor": partial} if partial not in (None, 1, 1.0) else None
    problems = scaling_problems(scaling)
    if problems:
        raise InputError("the target's rope cannot be served identically by SGLang and vLLM:\n  "
                         + "\n  ".join(m for m, _ in problems), field="rope_parameters")
    return dict(scaling)


def scaling_problems(scaling: Mapping[str, Any] | None) -> list[tuple[str, tuple[str, ...]]]:
    """(message, engines) for a draft rope (scaling dict without theta) SGLang or vLLM would not
    serve the way draftsmith trains it."""
    if not scaling:
        return []
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type in REPLACED:
        reason, engines = REPLACED[rope_type]
        return [(f"rope_type {rope_type!r}: {reason}; the draft would be served with another rope than it was "
                 "trained with (draftsmith gives the draft of such a target the default rope)", engines)]
    if rope_type not in SERVED:
        return [(f"rope_type {rope_type!r}: draftsmith serves only {', '.join(SERVED)} drafts identically in "
                 "SGLang and vLLM", _BOTH)]
    allowed, required = SERVED[rope_type]
    out: list[tuple[str, tuple[str, ...]]] = []
    extra = sorted(set(scaling) - allowed - {"type", "rope_theta"})
    if extra:
        out.append((f"rope {rope_type!r} with {extra}: not read alike by SGLang (factory.py:311-333 reads "
                    "attn_factor/extrapolation_factor) and vLLM (rotary_embedding/__init__.py:243-258 reads "
                    "attention_factor), or not implemented by draftsmith", _BOTH))
    missing = sorted(required - set(scaling))
    if missing:
        out.append((f"rope {rope_type!r} without {missing}: vLLM requires them (rotary_embedding/__init__.py:"
                    "167-171, 189, 244-245), SGLang defaults them", ("vllm",)))
    mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if rope_type == "yarn" and (mscale is not None and mscale_all is not None) != bool(mscale and mscale_all):
        out.append((f"yarn mscale={mscale!r}, mscale_all_dim={mscale_all!r}: SGLang applies them when both are "
                    "set (srt/layers/rotary_embedding/yarn.py:122-131), vLLM only when both are non-zero "
                    "(rotary_embedding/yarn_scaling_rope.py:38-46)", _BOTH))
    partial = scaling.get("partial_rotary_factor", 1.0)
    if not isinstance(partial, (int, float)) or not 0 < partial <= 1:
        out.append((f"partial_rotary_factor {partial!r} outside (0, 1]", _BOTH))
    return out


def config_problems(config: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """(message, engines) for the rope of a draft config.json as the engines read it.

    Both read `config.rope_parameters` as transformers 5 builds it from the file (SGLang
    srt/models/llama.py:322-328, vLLM model_executor/models/llama.py:246); transformers builds
    it from `rope_scaling` + `rope_theta` when those are present, else from `rope_parameters`,
    and copies a top-level `partial_rotary_factor` / `original_max_position_embeddings` into it
    (transformers modeling_rope_utils.standardize_rope_params). So every spelling must agree."""
    out: list[tuple[str, tuple[str, ...]]] = []
    theta = config.get("rope_theta")
    legacy = dict(config.get("rope_scaling") or {})
    params = config.get("rope_parameters")
    params = dict(params) if isinstance(params, Mapping) else None
    legacy.pop("type", None)
    if params is not None:
        if theta is not None and params.get("rope_theta") not in (None, theta):
            out.append((f"config.json: rope_theta {theta} != rope_parameters.rope_theta {params.get('rope_theta')}: "
                        "transformers versions differ in which one the engines get", _BOTH))
        core = {k: v for k, v in params.items() if k not in ("rope_theta", "type")}
        if legacy and core != legacy or not legacy and core not in ({}, {"rope_type": "default"}):
            out.append((f"config.json: rope_scaling {config.get('rope_scaling')} and rope_parameters {params} "
                        "disagree: transformers versions differ in which one the engines get", _BOTH))
    scaling = legacy or {k: v for k, v in (params or {}).items() if k != "rope_theta"}
    out.extend((f"config.json: {m}", e) for m, e in scaling_problems(scaling))
    top_partial = config.get("partial_rotary_factor", 1.0)
    rope_partial = scaling.get("partial_rotary_factor", 1.0)
    if top_partial != rope_partial:
        out.append((f"config.json: partial_rotary_factor {top_partial} (read by SGLang, srt/models/llama.py:199) != "
                    f"{rope_partial} in the rope (read by vLLM, rotary_embedding/__init__.py:69)", _BOTH))
    top_orig = config.get("original_max_position_embeddings")
    if top_orig is not None and top_orig != scaling.get("original_max_position_embeddings"):
        out.append((f"config.json: top-level original_max_position_embeddings {top_orig} overrides the rope's "
                    f"{scaling.get('original_max_position_embeddings')} in SGLang (srt/models/llama.py:329-334) "
                    "and transformers", _BOTH))
    return out
