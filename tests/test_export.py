"""export / inspect: the served folder round-trips, and every corruption that would make an
engine serve garbage is refused with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _export_helpers import AUX, DRAFT_VOCAB, make_checkpoint, make_full_vocab_checkpoint
from draftsmith import cli
from draftsmith.draft.config import Eagle3Config
from draftsmith.draft.model import Eagle3Draft
from draftsmith.errors import InputError
from draftsmith.export import ExportConfig, check_config, check_folder, export_checkpoint, load_target_config


@pytest.fixture(scope="module")
def checkpoint(tiny_llama_dir, tmp_path_factory) -> Path:
    return make_checkpoint(tiny_llama_dir, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def exported(checkpoint, tiny_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("served")
    export_checkpoint(ExportConfig(checkpoint=checkpoint, output_dir=out, target_model_path=tiny_llama_dir))
    return out


def test_trainer_checkpoint_passes_the_validator(checkpoint, tiny_llama_dir):
    report = check_folder(checkpoint, load_target_config(tiny_llama_dir))
    assert report.ok, report.errors
    assert report.d2t_summary == {"draft_vocab_size": DRAFT_VOCAB, "target_id_min": 0,
                                  "target_id_max": 3 * (DRAFT_VOCAB - 1), "identity": False}


def test_export_round_trip(checkpoint, exported, tiny_llama_dir):
    config = json.loads((exported / "config.json").read_text())
    target = json.loads((tiny_llama_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["tie_word_embeddings"] is False
    assert config["vocab_size"] == target["vocab_size"] and config["draft_vocab_size"] == DRAFT_VOCAB
    assert config["rope_theta"] == 100000.0 and config["rope_scaling"] is None
    # vLLM reads HF indices as is; SGLang captures at id + 1
    assert config["eagle_aux_hidden_state_layer_ids"] == AUX
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    before, after = load_file(str(checkpoint / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert set(after) == set(before) and "embed_tokens.weight" not in after
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert after["d2t"].dtype == torch.int64 and after["t2d"].dtype == torch.bool
    reloaded = Eagle3Draft.from_pretrained(exported)
    assert reloaded.config.aux_layer_ids == AUX
    assert torch.equal(reloaded.draft_to_target, torch.arange(DRAFT_VOCAB) * 3)


def test_export_cli_casts_and_inspect_says_it_loads(checkpoint, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert cli.run_command("export", [str(checkpoint), "--output-dir", str(out), "--dtype", "bfloat16",
                                      "--target-model-path", str(tiny_llama_dir)]) == 0
    weights = load_file(str(out / "model.safetensors"))
    assert weights["fc.weight"].dtype == torch.bfloat16 and weights["d2t"].dtype == torch.int64
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    capsys.readouterr()
    assert cli.run_command("inspect", [str(out), "--target-model-path", str(tiny_llama_dir)]) == 0
    text = capsys.readouterr().out
    assert "aux layers, vLLM (as is)     [1, 2, 3]" in text
    assert "aux layers, SGLang (id + 1)  [0, 1, 2]" in text
    assert "loads in SGLang (EAGLE3) and vLLM (eagle3): yes" in text


def test_export_includes_target_embeddings_on_request(checkpoint, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "with_embed"
    export_checkpoint(ExportConfig(checkpoint=checkpoint, output_dir=out, target_model_path=tiny_llama_dir,
                                   include_embeddings=True))
    embed = load_file(str(out / "model.safetensors"))["embed_tokens.weight"]
    target = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert torch.equal(embed, target.get_input_embeddings().weight.detach())
    assert check_folder(out, target.config).ok


def _corrupt_config(edit):
    def apply(folder: Path) -> None:
        path = folder / "config.json"
        cfg = json.loads(path.read_text())
        edit(cfg)
        path.write_text(json.dumps(cfg))
    return apply


def _corrupt_weights(edit):
    def apply(folder: Path) -> None:
        path = folder / "model.safetensors"
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path))
    return apply


def _set(key, value):
    def edit(cfg):
        cfg[key] = value
    return edit


def _sglang_ids(ids):
    def edit(cfg):
        cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = ids
    return edit


def _duplicate_d2t(t):
    d2t = t["d2t"].clone()
    d2t[1] = d2t[0] - 1          # draft ids 0 and 1 both map to target id 0
    t["d2t"] = d2t


CORRUPTIONS = {
    "missing d2t": (_corrupt_weights(lambda t: t.pop("d2t")), "missing tensor 'd2t'"),
    "missing midlayer tensor": (_corrupt_weights(lambda t: t.pop("midlayer.hidden_norm.weight")),
                                "missing tensor 'midlayer.hidden_norm.weight'"),
    "wrong fc shape": (_corrupt_weights(lambda t: t.update({"fc.weight": t["fc.weight"][:, :-1].contiguous()})),
                       "'fc.weight' has shape"),
    "wrong lm_head rows": (_corrupt_weights(lambda t: t.update({"lm_head.weight": t["lm_head.weight"][:-1].contiguous()})),
                           "'lm_head.weight' has shape"),
    "d2t int32": (_corrupt_weights(lambda t: t.update({"d2t": t["d2t"].int()})), "expected int64"),
    "d2t duplicates": (_corrupt_weights(_duplicate_d2t), "draft ids onto target ids already used"),
    "d2t out of vocab": (_corrupt_weights(lambda t: t.update({"d2t": t["d2t"] + 10 ** 6})),
                         "outside the target vocab"),
    "t2d disagrees": (_corrupt_weights(lambda t: t.update({"t2d": ~t["t2d"]})), "'t2d' does not mark"),
    "unknown tensor": (_corrupt_weights(lambda t: t.update({"midlayer.self_attn.q_proj.bias": torch.zeros(64)})),
                       "unknown tensor 'midlayer.self_attn.q_proj.bias'"),
    "NaN weight": (_corrupt_weights(lambda t: t["norm.weight"].__setitem__(0, float("nan"))), "NaN"),
    "tied embeddings": (_corrupt_config(_set("tie_word_embeddings", True)), "tie_word_embeddings must be false"),
    "tied by default": (_corrupt_config(lambda c: c.pop("tie_word_embeddings")), "tie_word_embeddings must be false"),
    "wrong architecture": (_corrupt_config(_set("architectures", ["LlamaForCausalLM"])), "architectures"),
    "no top-level rope": (_corrupt_config(lambda c: c.pop("rope_theta")), "missing 'rope_theta'"),
    "rope_theta differs from target": (_corrupt_config(_set("rope_theta", 10000.0)), "!= target rope_theta"),
    "SGLang ids not off by one": (_corrupt_config(_sglang_ids([1, 2, 3])), "SGLang ids [1, 2, 3] + 1 != vLLM ids"),
    "missing SGLang ids": (_corrupt_config(lambda c: c.pop("eagle_config")), "eagle_config"),
    "layer ids out of range": (_corrupt_config(lambda c: (c.update(eagle_aux_hidden_state_layer_ids=[1, 2, 8]),
                                                          _sglang_ids([0, 1, 7])(c))), "out of range"),
    "duplicate layer ids": (_corrupt_config(lambda c: (c.update(eagle_aux_hidden_state_layer_ids=[2, 2, 1]),
                                                       _sglang_ids([1, 1, 0])(c))), "distinct increasing"),
    "vLLM residual convention": (_corrupt_config(_set("norm_before_residual", True)), "norm_before_residual"),
    "vocab differs from target": (_corrupt_config(_set("vocab_size", 1000)), "vocab_size 1000 != target"),
    # #16.6: the rope as the engines read it (draftsmith.draft.rope)
    "dynamic rope": (_corrupt_config(lambda c: (c.update(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
                                                c["rope_parameters"].update(rope_type="dynamic", factor=2.0))),
                     "rope_type 'dynamic'"),
    "rope spellings disagree": (_corrupt_config(lambda c: c["rope_parameters"].update(rope_type="linear", factor=2.0)),
                                "disagree"),
    "partial rotary only top-level": (_corrupt_config(_set("partial_rotary_factor", 0.5)), "partial_rotary_factor 0.5"),
    "top-level original max positions": (_corrupt_config(_set("original_max_position_embeddings", 2048)),
                                         "overrides the rope's"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_validator_rejects_corruption(name, exported, tiny_llama_dir, tmp_path, capsys):
    import shutil

    corrupt, message = CORRUPTIONS[name]
    folder = tmp_path / "bad"
    shutil.copytree(exported, folder)
    corrupt(folder)
    report = check_folder(folder, load_target_config(tiny_llama_dir))
    assert not report.ok
    assert any(message in e for e in report.errors), report.errors
    with pytest.raises(InputError, match="will not load correctly"):
        report.raise_if_invalid()
    assert cli.run_command("inspect", [str(folder), "--target-model-path", str(tiny_llama_dir)]) == 1
    assert "loads in SGLang (EAGLE3) and vLLM (eagle3): NO" in capsys.readouterr().out


def test_export_refuses_a_corrupt_checkpoint(checkpoint, tiny_llama_dir, tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    _corrupt_weights(lambda t: t.pop("midlayer.mlp.up_proj.weight"))(folder)
    out = tmp_path / "out"
    assert cli.run_command("export", [str(folder), "--output-dir", str(out),
                                      "--target-model-path", str(tiny_llama_dir)]) == 2
    assert not (out / "model.safetensors").exists()


def test_pickled_weights_are_never_loaded(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InputError, match="never unpickles"):
        check_folder(tmp_path)


def test_rope_scaling_must_match_the_target():
    cfg = Eagle3Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, vocab_size=1000, draft_vocab_size=100, target_hidden_size=64,
                       aux_layer_ids=[2, 16, 29], target_num_hidden_layers=32, rope_theta=500000.0,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    served = cfg.to_config_dict()
    target = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 32, "rope_theta": 500000.0,
              "rope_scaling": dict(cfg.rope_scaling)}
    assert check_config(served, target)[0] == []
    target["rope_scaling"] = None
    errors = check_config(served, target)[0]
    assert len(errors) == 1 and "rope_scaling" in errors[0]


# ----- #16.1: a full-vocabulary draft ships no d2t/t2d ---------------------------------------------

@pytest.fixture(scope="module")
def full_vocab_checkpoint(tiny_llama_dir, tmp_path_factory) -> Path:
    return make_full_vocab_checkpoint(tiny_llama_dir, tmp_path_factory.mktemp("full_vocab"))


def test_full_vocab_export_writes_no_vocab_mapping(full_vocab_checkpoint, tiny_llama_dir, tmp_path):
    """vLLM 0.33.0 creates `draft_id_to_target_id` only when draft_vocab_size != the target's
    vocab (model_executor/models/llama_eagle3.py:339-345) but renames any shipped `d2t` to it
    (:428-430), so its loader refuses the folder; SGLang 0.5.23 uses the identity when no d2t
    comes (hot_token_id None: srt/speculative/eagle_worker_v2.py:757)."""
    out = tmp_path / "served"
    report = export_checkpoint(ExportConfig(checkpoint=full_vocab_checkpoint, output_dir=out,
                                            target_model_path=tiny_llama_dir))
    assert report.ok and report.engines == {"sglang": [], "vllm": []}
    written = load_file(str(out / "model.safetensors"))
    assert "d2t" not in written and "t2d" not in written
    config = json.loads((out / "config.json").read_text())
    assert config["draft_vocab_size"] == config["vocab_size"]
    reloaded = Eagle3Draft.from_pretrained(out)
    assert torch.equal(reloaded.draft_to_target, torch.arange(config["vocab_size"]))


def test_full_vocab_with_d2t_is_refused_for_vllm_only(full_vocab_checkpoint, tiny_llama_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "with_d2t"
    shutil.copytree(full_vocab_checkpoint, folder)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    _corrupt_weights(lambda t: t.update({"d2t": torch.zeros(vocab, dtype=torch.long),
                                         "t2d": torch.ones(vocab, dtype=torch.bool)}))(folder)
    report = check_folder(folder, load_target_config(tiny_llama_dir))
    assert not report.ok
    assert report.engines["sglang"] == []
    assert len(report.engines["vllm"]) == 1 and "draft_id_to_target_id" in report.engines["vllm"][0]
    assert cli.run_command("inspect", [str(folder), "--target-model-path", str(tiny_llama_dir)]) == 1
    text = capsys.readouterr().out
    assert "SGLang: loads" in text and "vLLM: REFUSES" in text
    assert cli.run_command("inspect", [str(folder), "--engine", "sglang"]) == 0
    assert cli.run_command("inspect", [str(folder), "--engine", "vllm"]) == 1


# ----- #16.2: the export's dtype is the target's ------------------------------------------------

def _target_saying(tiny_llama_dir: Path, folder: Path, dtype: str | None) -> Path:
    """A copy of the tiny target's config.json that declares `dtype` (or no dtype at all)."""
    folder.mkdir()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    for key in ("dtype", "torch_dtype"):
        config.pop(key, None)
    if dtype is not None:
        config["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("declared, expected", [("bfloat16", "bfloat16"), ("float16", "float16"),
                                                (None, "bfloat16"), ("float32", "float32")])
def test_export_dtype_defaults_to_the_targets(declared, expected, checkpoint, tiny_llama_dir, tmp_path):
    """SGLang 0.5.23 reads config `dtype` before `torch_dtype` (srt/configs/model_config.py:2291) and
    under `--dtype auto` serves a float32 config as float16 (:2304-2319): the served draft must
    declare the target's dtype, and the declaration must be what the tensors are."""
    target = _target_saying(tiny_llama_dir, tmp_path / "target", declared)
    out = tmp_path / "served"
    export_checkpoint(ExportConfig(checkpoint=checkpoint, output_dir=out, target_model_path=target))
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == expected
    weights = load_file(str(out / "model.safetensors"))
    assert {str(t.dtype).removeprefix("torch.") for k, t in weights.items() if t.is_floating_point()} == {expected}
    assert weights["d2t"].dtype == torch.int64


def test_export_without_a_target_uses_the_dtype_recorded_at_training(tiny_llama_dir, tmp_path):
    from transformers import AutoConfig

    target = AutoConfig.from_pretrained(_target_saying(tiny_llama_dir, tmp_path / "target", "float16"))
    cfg = Eagle3Config.from_target_config(target, draft_vocab_size=DRAFT_VOCAB, aux_layer_ids=AUX)
    assert cfg.target_dtype == "float16"
    ckpt = Eagle3Draft(cfg).save_pretrained(tmp_path / "ckpt")   # fp32 master weights, declared as such
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "float32"
    export_checkpoint(ExportConfig(checkpoint=ckpt, output_dir=tmp_path / "served"))
    assert json.loads((tmp_path / "served" / "config.json").read_text())["dtype"] == "float16"
    assert load_file(str(tmp_path / "served" / "model.safetensors"))["fc.weight"].dtype == torch.float16


def test_declared_dtype_must_be_the_tensors(exported, tmp_path):
    import shutil

    folder = tmp_path / "lying"
    shutil.copytree(exported, folder)
    _corrupt_weights(lambda t: t.update({k: v.half() for k, v in t.items() if v.is_floating_point()}))(folder)
    report = check_folder(folder)
    assert any("declares dtype" in e for e in report.errors), report.errors
    _corrupt_config(lambda c: c.update(dtype="float16", torch_dtype="bfloat16"))(folder)
    assert any("torch_dtype" in e for e in check_folder(folder).errors)


# ----- #16.5: config keys the engines act on are refused, inert ones dropped -------------------------

ACTED_ON_VALUES = {   # key -> (a value the engines act on, the engines named in the error)
    "norm_output": (True, "SGLang and vLLM"),
    "fc_norm": (True, "SGLang and vLLM"),
    "use_aux_norm": (True, "SGLang"),
    "num_aux_hidden_states": (4, "SGLang and vLLM"),
    "bias": (True, "SGLang and vLLM"),
    "logit_scale": (0.5, "vLLM"),
    "norm_before_fc": (True, "SGLang and vLLM"),
    "attention_bias": (True, "SGLang and vLLM"),
    "mlp_bias": (True, "vLLM"),
    "norm_before_residual": (True, "vLLM"),
    "final_logit_softcapping": (30.0, "SGLang"),
    "rotary_pct": (0.25, "vLLM"),
    "rope_is_neox_style": (False, "SGLang"),
    "is_causal": (False, "vLLM"),
    "layer_types": (["sliding_attention"], "vLLM"),
    "quantization_config": ({"quant_method": "fp8"}, "SGLang and vLLM"),
}


@pytest.mark.parametrize("key", list(ACTED_ON_VALUES))
def test_keys_the_engines_act_on_are_refused_everywhere(key, exported, tiny_llama_dir, tmp_path):
    import shutil

    value, engines = ACTED_ON_VALUES[key]
    folder = tmp_path / "acted_on"
    shutil.copytree(exported, folder)
    _corrupt_config(_set(key, value))(folder)
    errors = check_folder(folder, load_target_config(tiny_llama_dir)).errors          # inspect
    assert any(key in e and f"acted on by {engines}," in e for e in errors), errors
    with pytest.raises(InputError, match=key):                                          # eval's draft loader
        Eagle3Draft.from_pretrained(folder)
    with pytest.raises(InputError, match=key):                                          # export
        export_checkpoint(ExportConfig(checkpoint=folder, output_dir=tmp_path / "out"))


def test_eagle_config_keys_the_engines_act_on_are_refused(exported, tmp_path):
    import shutil

    for key, value in (("norm_before_fc", True), ("use_aux_hidden_state", False)):
        folder = tmp_path / key
        shutil.copytree(exported, folder)
        _corrupt_config(lambda c: c["eagle_config"].update({key: value}))(folder)
        assert any(f"eagle_config.{key}" in e for e in check_folder(folder).errors)
        with pytest.raises(InputError, match=key):
            Eagle3Draft.from_pretrained(folder)


def test_inert_unknown_keys_are_dropped_with_a_warning(exported, tmp_path, caplog):
    import logging
    import shutil

    folder = tmp_path / "inert"
    shutil.copytree(exported, folder)
    _corrupt_config(lambda c: (c.update(pretraining_tp=1, some_tool_note="x"),
                               c["eagle_config"].update(use_last_layernorm=True)))(folder)
    report = check_folder(folder)
    assert report.ok, report.errors
    assert any("pretraining_tp" in w and "some_tool_note" in w for w in report.warnings), report.warnings
    with caplog.at_level(logging.WARNING):
        Eagle3Draft.from_pretrained(folder)
    assert "some_tool_note" in caplog.text
    out = tmp_path / "out"
    export_checkpoint(ExportConfig(checkpoint=folder, output_dir=out))
    written = json.loads((out / "config.json").read_text())
    assert "some_tool_note" not in written and "pretraining_tp" not in written
    assert "use_last_layernorm" not in written["eagle_config"]


# ----- #16.8: aux layer 0 (the embedding output); vLLM pipeline parallelism needs embeddings --------

def test_aux_layer_zero_is_the_embedding_output_both_engines_capture(tiny_llama_dir, tmp_path, capsys):
    """HF hidden_states[0] = the embedding output. vLLM 0.33.0 captures it before layer 0 on the
    first PP rank (model_executor/models/llama.py:428-431, id 0 as is); SGLang 0.5.23 captures at
    id + 1 = layer 0 (srt/models/llama.py:941) the stream before any residual exists, i.e. the
    embeddings (srt/layers/layer_boundary/stage.py:421-434), so its id is -1."""
    from transformers import AutoConfig

    cfg = Eagle3Config.from_target_config(AutoConfig.from_pretrained(tiny_llama_dir), draft_vocab_size=DRAFT_VOCAB,
                                          aux_layer_ids=[0, 2, 5])
    ckpt = Eagle3Draft(cfg).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "served"
    report = export_checkpoint(ExportConfig(checkpoint=ckpt, output_dir=out, target_model_path=tiny_llama_dir))
    assert report.ok, report.errors
    config = json.loads((out / "config.json").read_text())
    assert config["eagle_aux_hidden_state_layer_ids"] == [0, 2, 5]
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [-1, 1, 4]
    written = dict(config)
    written.pop("draftsmith")          # a folder from another tool: ids from the engines' keys alone
    assert Eagle3Config.from_config_dict(written).aux_layer_ids == [0, 2, 5]
    assert cli.run_command("inspect", [str(out)]) == 0
    assert "--include-embeddings" in capsys.readouterr().out


def test_inspect_warns_vllm_pipeline_parallel_needs_the_draft_embeddings(checkpoint, tiny_llama_dir, tmp_path):
    """vLLM 0.33.0's V1 model runner shares the target's embeddings with the draft only when
    pipeline parallelism is 1 (v1/spec_decode/llm_base_proposer.py:1424-1508, else "loaded
    separately" from the draft folder); without embed_tokens.weight the draft's stay uninitialized."""
    bare = check_folder(checkpoint)
    assert any("--include-embeddings" in w and "pipeline" in w for w in bare.warnings)
    out = tmp_path / "with_embed"
    export_checkpoint(ExportConfig(checkpoint=checkpoint, output_dir=out, target_model_path=tiny_llama_dir,
                                   include_embeddings=True))
    assert not any("--include-embeddings" in w for w in check_folder(out).warnings)


# ----- a config that leaves the aux ids or rope_scaling out (SpecForge 0.2.0's SGLang export) ---------

def _served_default_layers(num_layers: int = 32) -> tuple[dict, dict]:
    """A served config whose aux layers are the engines' default, HF hidden_states (2, L//2, L-3)."""
    cfg = Eagle3Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, vocab_size=1000, draft_vocab_size=100, target_hidden_size=64,
                       aux_layer_ids=[2, num_layers // 2, num_layers - 3], target_num_hidden_layers=num_layers,
                       rope_theta=10000.0, rope_scaling=None)
    target = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": num_layers, "rope_theta": 10000.0,
              "rope_scaling": None}
    return cfg.to_config_dict(), target


def test_engine_default_aux_layers_serve_a_config_without_ids():
    """Without ids, SGLang 0.5.23 captures `layers_to_capture = [2, L//2, L-3]` before those layers
    (srt/models/llama.py:933-936: no + 1 on the default) and vLLM 0.33.0 falls back to
    `get_eagle3_default_aux_hidden_state_layers` = (2, L//2, L-3), captured before layer idx
    (v1/worker/gpu_model_runner.py:5180-5186, model_executor/models/interfaces.py:1751-1772): both
    HF hidden_states (2, L//2, L-3). Such a folder loads in both: a warning names the layers."""
    served, target = _served_default_layers()
    served.pop("eagle_aux_hidden_state_layer_ids")
    served.pop("eagle_config")
    errors, warnings = check_config(served, target)
    assert errors == []
    assert any("no aux layer ids" in w and "[2, 16, 29]" in w for w in warnings), warnings


@pytest.mark.parametrize("drop", ["sglang", "vllm"])
def test_one_engines_ids_missing_is_refused_only_where_its_default_differs(drop):
    served, target = _served_default_layers()
    if drop == "sglang":
        served.pop("eagle_config")
    else:
        served.pop("eagle_aux_hidden_state_layer_ids")
    errors, warnings = check_config(served, target)
    assert errors == [] and any("captures its default" in w for w in warnings)   # given ids = the default

    served, target = _served_default_layers()
    served["eagle_aux_hidden_state_layer_ids"] = [1, 16, 29]
    served["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [0, 15, 28]
    served.pop("eagle_config" if drop == "sglang" else "eagle_aux_hidden_state_layer_ids")
    errors, _ = check_config(served, target)
    assert len(errors) == 1 and "captures its default" in errors[0] and "[1, 16, 29]" in errors[0]
    assert errors[0].engines == (drop,)            # only the engine without ids serves other layers


def test_missing_rope_scaling_is_plain_rope():
    """Both engines read the top-level rope_scaling; absent, they run plain rope: fine for a plain
    target (a warning), refused for a scaled one."""
    served, target = _served_default_layers()
    served.pop("rope_scaling")
    errors, warnings = check_config(served, target)
    assert errors == [] and any("missing 'rope_scaling'" in w for w in warnings)
    target["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    errors, _ = check_config(served, target)
    assert len(errors) == 1 and "the target scales rope" in errors[0]


def test_eval_loads_a_folder_without_aux_ids_with_the_engines_default(exported, tiny_llama_dir, tmp_path):
    """`draftsmith eval` decodes such a folder with the layers the engines would capture, not refuse it."""
    import json
    import shutil

    from draftsmith.draft.model import Eagle3Draft

    folder = tmp_path / "no_ids"
    shutil.copytree(exported, folder)
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("eagle_aux_hidden_state_layer_ids", "eagle_config", "draftsmith"):
        cfg.pop(key, None)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="aux_layer_ids"):
        Eagle3Draft.from_pretrained(folder)                 # no target to take the default from
    layers = load_target_config(tiny_llama_dir).num_hidden_layers
    draft = Eagle3Draft.from_pretrained(folder, target_layers=layers)
    assert draft.config.aux_layer_ids == [2, layers // 2, layers - 3]
    assert draft.config.target_num_hidden_layers == layers
