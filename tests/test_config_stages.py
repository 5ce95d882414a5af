"""Each stage's typed config (draftsmith/config.py) through the real `draftsmith <stage>` parser:
(a) every deprecated spelling parses to the same config as the canonical flag and logs exactly one
warning naming that flag (SpecForge's aliases parse to it silently), (b) `--print-config` read back
with `--config` gives an equal config, (c) a YAML key with a typo fails naming the file, the line
and the key.

Stages are listed in `STAGES` below, one entry each (helpers converting other stages add theirs).
"""

from __future__ import annotations

import logging

import pytest

from draftsmith import cli, config
from draftsmith.errors import InputError


class Stage:
    def __init__(self, name, base, deprecated=(), aliases=(), varied=(), typo=("max_length", "max_lenght", 3),
                 required=()):
        self.name = name
        self.base = list(base)              # the arguments argparse requires (positionals) or that all share
        self.required = list(required)      # the other required options, when not in every argv
        self.deprecated = list(deprecated)  # (old argv, canonical argv, canonical flag)
        self.aliases = list(aliases)        # (alias argv, canonical argv)
        self.varied = list(varied)          # non-default flags for the --print-config round trip
        self.typo = typo                    # (a real key, a misspelling of it, a value)

    def __repr__(self):
        return self.name


STAGES = [
    Stage("prepare-data", [],
          aliases=[(["--output-path", "o", "--sample-size", "5"], ["--output-dir", "o", "--num-samples", "5"])],
          varied=["--data-path", "a.jsonl", "b.jsonl", "--output-dir", "o", "--num-samples", "5", "--split-eval",
                  "--eval-ratio", "1e-1", "--max-row-depth", "9", "--strict", "--no-progress"],
          typo=("eval_ratio", "eval_ration", 0.1)),
    Stage("validate-data", ["f.jsonl"], varied=["--max-examples", "2", "--json", "--max-row-bytes", "1000"],
          typo=("max_examples", "max_exampels", 2)),
    Stage("regenerate-data", ["--target-model-path", "m", "--data-path", "d", "--output-dir", "o"],
          deprecated=[(["--output-path", "o2"], ["--output-dir", "o2"], "--output-dir")],
          aliases=[(["--model-path", "x"], ["--target-model-path", "x"])],
          varied=["--data-path", "a", "b", "--max-new-tokens", "7", "--temperature", "0.5", "--dtype", "float32",
                  "--no-progress", "--max-row-depth", "9", "--strict", "--num-samples", "3"],
          typo=("max_new_tokens", "max_new_token", 3)),
    Stage("build-dataset", ["--data-path", "d", "--target-model-path", "m"],
          deprecated=[(["--tokenizer", "t"], ["--target-model-path", "t"], "--target-model-path"),
                      (["--output", "o"], ["--output-dir", "o"], "--output-dir")],
          aliases=[(["--model-path", "x"], ["--target-model-path", "x"])],
          varied=["--chat-template", "qwen", "--max-length", "512", "--system-prompt", "--num-proc", "2",
                  "--draft-vocab-size", "32", "--max-row-bytes", "4096", "--strict", "--output-dir", "o"]),
    Stage("hidden-states", ["--target-model-path", "m", "--data-path", "d"],
          deprecated=[(["--tokenizer", "t"], ["--tokenizer-path", "t"], "--tokenizer-path")],
          aliases=[(["--model-path", "x", "--output-path", "o"], ["--target-model-path", "x", "--output-dir", "o"])],
          varied=["--aux-layers", "1,2,3", "--shard-mb", "0.5", "--output-dir", "o", "--no-progress",
                  "--mem-frac", "0.5", "--target-signal", "topk:8"]),
    Stage("eval", ["--target-model-path", "m", "--benchmark", "mtbench"],
          deprecated=[(["--num-steps", "3", "7"], ["--draft-depth", "3", "7"], "--draft-depth"),
                      (["--limit", "2"], ["--num-questions", "2"], "--num-questions"),
                      (["--output", "r.json"], ["--output-file", "r.json"], "--output-file")],
          varied=["--draft-depth", "3", "7", "--metrics", "m.jsonl", "--backend", "sglang", "--topk", "2"],
          typo=("max_new_tokens", "max_new_token", 3)),
    Stage("export", ["ckpt"], required=["--output-dir", "out"],
          deprecated=[(["--output", "o"], ["--output-dir", "o"], "--output-dir")],
          varied=["--output-dir", "out", "--dtype", "float16", "--include-embeddings", "--target-model-path", "t"],
          typo=("dtype", "dtpye", "float16")),
    Stage("inspect", ["ckpt"], varied=["--engine", "vllm", "--json"], typo=("json", "jsn", True)),
    Stage("estimate-memory", ["--target-config", "c.json"],
          varied=["--mode", "online", "--supervised", "0.5", "--attention", "sdpa", "--world-size", "4"]),
    Stage("demo", [],
          deprecated=[(["--output", "o"], ["--output-dir", "o"], "--output-dir"),
                      (["--restart"], ["--overwrite"], "--overwrite"),
                      (["--num-conversations", "7"], ["--num-samples", "7"], "--num-samples"),
                      (["--eval-questions", "3"], ["--num-questions", "3"], "--num-questions"),
                      (["--num-steps", "4"], ["--draft-depth", "4"], "--draft-depth"),
                      (["--epochs", "3"], ["--num-epochs", "3"], "--num-epochs")],
          varied=["--quick", "--num-epochs", "3", "--aux-layers", "1,2,3", "--regenerate", "--device", "cpu"]),
]


def _config(name: str, argv: list[str]):
    parser, module = cli.build_parser(name)
    args = parser.parse_args(argv)
    build = getattr(module, "config_from_args", None) or (lambda a: config.from_args(module.CONFIG, a))
    return build(args)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("stage", [s for s in STAGES if s.deprecated or s.aliases], ids=repr)
def test_old_spellings_parse_to_the_canonical_config(stage, caplog):
    for old, new, flag in stage.deprecated:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="draftsmith"):
            canonical = _config(stage.name, stage.base + new)
        assert _warnings(caplog) == []
        with caplog.at_level(logging.WARNING, logger="draftsmith"):
            assert _config(stage.name, stage.base + old) == canonical, old
        warnings = _warnings(caplog)
        assert len(warnings) == 1 and flag in warnings[0] and old[0] in warnings[0], (old, warnings)
    for alias, new in stage.aliases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="draftsmith"):
            assert _config(stage.name, stage.base + alias) == _config(stage.name, stage.base + new)
        assert _warnings(caplog) == []


@pytest.mark.parametrize("stage", STAGES, ids=repr)
def test_print_config_reads_back_equal(stage, tmp_path, capsys):
    argv = stage.base + stage.varied
    wanted = _config(stage.name, argv)
    assert cli.run_command(stage.name, argv + ["--print-config"]) == 0
    path = tmp_path / "config.yaml"
    path.write_text(capsys.readouterr().out, encoding="utf-8")
    positional = [a for a in stage.base[:1] if not a.startswith("--")]       # argparse still wants them
    assert _config(stage.name, positional + ["--config", str(path)]) == wanted
    assert wanted != _config(stage.name, stage.base + stage.required)        # the round trip carried something


@pytest.mark.parametrize("stage", STAGES, ids=repr)
def test_typo_in_a_config_file_names_file_line_and_key(stage, tmp_path):
    key, typo, value = stage.typo
    path = tmp_path / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump({key: value}) + yaml.safe_dump({typo: value}), encoding="utf-8")
    parser, module = cli.build_parser(stage.name)
    with pytest.raises(InputError) as err:
        config.from_args(module.CONFIG, parser.parse_args(stage.base + ["--config", str(path)]))
    assert (err.value.path, err.value.line, err.value.field) == (path, 2, typo)
    assert str(path) in str(err.value) and "line 2" in str(err.value) and typo in str(err.value)
