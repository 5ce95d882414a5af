"""The dtype policy (draftsmith.target.dtype): bf16 only where it is native, float32 elsewhere,
`--dtype` always wins; every stage that runs a model follows it and logs the choice.

The CPU capability is forced both ways by patching torch's own probes, so the AVX2-only path and
the AVX512-BF16/AMX path are both exercised whatever CPU runs the suite."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch

from draftsmith import cli, demo
from draftsmith.errors import DraftsmithError
from draftsmith.features import FeatureStore
from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states
from draftsmith.target import dtype as policy

from _hidden_states_helpers import make_tokenized, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture
def cpu_bf16(monkeypatch):
    """force(avx512_bf16, amx): make torch's CPU probes answer as a CPU with those features would."""
    def force(avx512_bf16: bool, amx: bool = False) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return force


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc/cpuinfo is Linux-only")
def test_the_probe_agrees_with_the_kernels_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    expected = (["AVX512-BF16"] if "avx512_bf16" in flags else []) + (["AMX"] if "amx_tile" in flags else [])
    assert policy.cpu_native_bf16() == expected


@pytest.mark.parametrize("avx512_bf16, amx, want", [(False, False, torch.float32), (True, False, torch.bfloat16),
                                                    (False, True, torch.bfloat16)])
def test_auto_on_cpu_follows_native_bf16(cpu_bf16, avx512_bf16, amx, want):
    cpu_bf16(avx512_bf16, amx)
    choice = policy.choose_dtype("auto", "cpu")
    assert choice.dtype == want
    assert ("no native bf16" in choice.reason) == (want == torch.float32)
    assert policy.choose_dtype(None, "cpu").dtype == want


def test_accelerators_get_bf16_and_explicit_dtypes_always_win(cpu_bf16):
    cpu_bf16(False)
    assert policy.choose_dtype("auto", "cuda:0").dtype == torch.bfloat16
    for name, want in (("bf16", torch.bfloat16), ("float16", torch.float16), ("fp32", torch.float32)):
        assert policy.choose_dtype(name, "cpu").dtype == want
        assert policy.choose_dtype(name, "cuda").dtype == want
    cpu_bf16(True)
    assert policy.choose_dtype("float32", "cpu").dtype == torch.float32
    with pytest.raises(DraftsmithError, match="--dtype: unknown dtype 'int8'"):
        policy.choose_dtype("int8", "cpu")


def test_exact_keeps_float32_under_auto_only(cpu_bf16):
    cpu_bf16(True, True)
    assert policy.choose_dtype("auto", "cpu", exact=True).dtype == torch.float32
    assert policy.choose_dtype("auto", "cuda", exact=True).dtype == torch.float32
    assert policy.choose_dtype("bfloat16", "cpu", exact=True).dtype == torch.bfloat16


@pytest.mark.parametrize("native", [False, True])
def test_autocast_auto_follows_the_same_rule(cpu_bf16, native, capsys):
    cpu_bf16(native)
    assert policy.resolve_autocast("auto", "cpu") == (torch.bfloat16 if native else None)
    assert ("in bf16 autocast" if native else "no autocast") in capsys.readouterr().err
    assert policy.resolve_autocast("auto", "cuda") == torch.bfloat16
    assert policy.resolve_autocast("off", "cuda") is None
    assert policy.resolve_autocast("bf16", "cpu") == torch.bfloat16


@pytest.mark.parametrize("native, want", [(False, "float32"), (True, "bfloat16")])
def test_hidden_states_stage_runs_the_target_in_the_chosen_dtype(tiny_llama_dir, tmp_path, cpu_bf16, capsys,
                                                                 native, want):
    cpu_bf16(native)
    data = make_tokenized(tmp_path / "data", 3, max_len=20)
    run_hidden_states(HiddenStatesConfig(target_model_path=str(tiny_llama_dir), data_path=str(data),
                                         output_dir=str(tmp_path / "store"), codec="bf16", device="cpu",
                                         progress=False))
    assert FeatureStore.open(tmp_path / "store").manifest["settings"]["dtype"] == f"torch.{want}"
    err = capsys.readouterr().err
    assert f"hidden-states: target dtype {want} on cpu" in err


def test_stage_flags_default_to_auto_and_accept_an_override():
    for name, flags in (("hidden-states", ["--model-path", "m", "--data-path", "d"]),
                        ("regenerate-data", ["--model-path", "m", "--data-path", "d", "--output-path", "o"]),
                        ("eval", ["--target-model-path", "m", "--benchmark", "mtbench"]),
                        ("train", []),
                        ("demo", [])):
        parser, _ = cli.build_parser(name)
        assert getattr(parser.parse_args(flags), "dtype", None) in ("auto", None), name  # train: TrainConfig's
        assert parser.parse_args(flags + ["--dtype", "float32"]).dtype == "float32", name
    from draftsmith.train.trainer import TrainConfig

    assert TrainConfig().dtype == "auto" and TrainConfig().autocast == "auto"


def test_eval_loads_float32_under_auto_even_on_a_native_bf16_cpu(tiny_llama_dir, cpu_bf16, capsys):
    from draftsmith.eval.cli import EvalConfig, config_record, load_models

    cpu_bf16(True, True)
    cfg = EvalConfig(target_model_path=tiny_llama_dir, draft_model_path=None, benchmarks=["mtbench"])
    _, model, _ = load_models(cfg)
    assert model.dtype == torch.float32 and config_record(cfg)["dtype"] == "float32"
    assert "eval: target and draft dtype float32" in capsys.readouterr().err
    _, model, _ = load_models(EvalConfig(target_model_path=tiny_llama_dir, draft_model_path=None,
                                         benchmarks=["mtbench"], dtype="bfloat16"))
    assert model.dtype == torch.bfloat16


def test_demo_passes_its_dtype_to_every_stage_that_runs_a_model(monkeypatch, tmp_path):
    calls: dict[str, list[str]] = {}
    monkeypatch.setattr(demo.pipeline, "call_stage", lambda name, argv: calls.setdefault(name, argv))
    cfg = demo.config_from_args(demo_args(["--dtype", "float32", "--regenerate", "--device", "cpu"]))
    ctx = demo.StageContext(cfg, tmp_path, {"model": {"model_path": "m"}, "prepare-data": {"train_jsonl": "x"},
                                            "build-dataset": {"dataset": "d"}, "hidden-states": {"features": "f"},
                                            "train": {"checkpoint": "c", "metrics": "m.jsonl"},
                                            "export": {"draft": "e"}}, resuming=False)
    for stage in (demo.stage_regenerate_data, demo.stage_hidden_states, demo.stage_train, demo.stage_eval):
        try:
            stage(ctx)
        except (OSError, DraftsmithError, json.JSONDecodeError):
            pass  # the stub ran no stage, so there is no output to read back; the argv is what we check
    assert set(calls) == {"regenerate-data", "hidden-states", "train", "eval"}
    for name, argv in calls.items():
        assert argv[argv.index("--dtype") + 1] == "float32", name
    default = demo.config_from_args(demo_args([]))
    assert default.dtype is None and demo._dtype_flag(default) == []
    # the dtype changes the features, so it is part of every key from the replies on
    keys = demo.stage_keys(cfg, demo.STAGES)
    other = demo.stage_keys(demo.config_from_args(demo_args(["--dtype", "bfloat16", "--regenerate",
                                                             "--device", "cpu"])), demo.STAGES)
    assert keys["build-dataset"] != other["build-dataset"] and keys["prepare-data"] == other["prepare-data"]


def demo_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)
