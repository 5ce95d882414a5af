"""draftsmith/config.py: one typed dataclass drives a stage's flags, config files and docs.

Checked against independent expectations: PyYAML's own reading of `1e-4` (a string), the
precedence default < file < command line per nested field, the file/line/key of an error,
the one warning a deprecated spelling logs, and a `--print-config` round trip.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from draftsmith import config
from draftsmith.config import option
from draftsmith.errors import InputError


@dataclass(frozen=True)
class Inner:
    max_row_bytes: int = option(1024, help="bytes")
    max_row_depth: int = option(8, help="depth")


@dataclass
class Toy:
    target_model_path: str = option(help="the target", aliases=("--model-path",), deprecated=("--tokenizer",))
    learning_rate: float = option(1e-3, help="lr")
    output_dir: Path | None = option(None, help="out", deprecated=("--output",))
    layers: list[int] | None = option(None, help="ids", sep=",")
    files: list[Path] = option(help="inputs", default_factory=list)
    mode: Literal["a", "b"] = option("a", help="mode")
    progress: bool = option(True, help="bar")
    limits: Inner = field(default_factory=Inner)


def _parse(argv):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Toy)
    return config.from_args(Toy, parser.parse_args(argv))


def test_flags_types_and_defaults():
    cfg = _parse(["--target-model-path", "m", "--layers", "1,2", "--files", "a", "b", "--no-progress",
                  "--max-row-depth", "3"])
    assert cfg == Toy(target_model_path="m", layers=[1, 2], files=[Path("a"), Path("b")], progress=False,
                      limits=Inner(max_row_depth=3))
    assert isinstance(cfg.learning_rate, float) and cfg.limits.max_row_bytes == 1024
    with pytest.raises(SystemExit):
        _parse(["--target-model-path", "m", "--mode", "c"])
    with pytest.raises(InputError, match="--target-model-path is required"):
        _parse([])


def test_yaml_1e4_nested_override_and_precedence(tmp_path):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text("target-model-path: m\nlearning_rate: 1e-4\nlimits:\n  max_row_bytes: 2_048\n"
                    "  max-row-depth: 5\nlayers: [3, 4]\n")
    assert yaml.safe_load(path.read_text())["learning_rate"] == "1e-4"      # PyYAML 1.1 reads a string
    cfg = _parse(["--config", str(path), "--max-row-depth", "9"])
    # the file's nested value stays where the command line did not override it, and the flag wins
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float)
    assert cfg.limits == Inner(max_row_bytes=2048, max_row_depth=9) and cfg.layers == [3, 4]


@pytest.mark.parametrize("text, field_name, line, message", [
    ("target-model-path: m\nlearning_rat: 1\n", "learning_rat", 2, "did you mean 'learning_rate'"),
    ("target-model-path: m\nlimits:\n  max_row_byte: 1\n", "limits.max_row_byte", 3, "did you mean"),
    ("target-model-path: m\nlimits:\n  max_row_bytes: many\n", "limits.max_row_bytes", 3, "expected an integer"),
    ("target-model-path: m\nmode: c\n", "mode", 2, "expected one of a, b"),
    ("target-model-path: m\nprogress: 0\n", "progress", 2, "expected true or false"),
    ("target-model-path: m\nmodel-path: n\n", "model-path", 2, "given twice"),
    ("- 1\n- 2\n", None, 1, "expected a mapping"),
])
def test_config_file_errors_name_file_line_and_key(tmp_path, text, field_name, line, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        _parse(["--config", str(path)])
    assert (err.value.field, err.value.line, err.value.path) == (field_name, line, path)
    assert str(path) in str(err.value)


def test_aliases_silent_deprecated_warn_once(caplog):
    canonical = _parse(["--target-model-path", "m", "--output-dir", "o"])
    with caplog.at_level(logging.WARNING, logger="draftsmith"):
        assert _parse(["--model-path", "m", "--output-dir", "o"]) == canonical
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="draftsmith"):
        assert _parse(["--tokenizer", "m", "--output", "o"]) == canonical
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["--tokenizer is deprecated; use --target-model-path",
                        "--output is deprecated; use --output-dir"]


def test_print_config_reads_back(tmp_path):
    cfg = _parse(["--target-model-path", "m", "--layers", "1,2", "--output-dir", "o", "--max-row-bytes", "7",
                  "--learning-rate", "3e-5"])
    path = tmp_path / "printed.yaml"
    path.write_text(config.to_yaml(cfg))
    assert _parse(["--config", str(path)]) == cfg


def test_flag_table_lists_every_flag_and_spelling():
    table = config.flag_table(Toy)
    for spelling in ("--target-model-path", "--model-path", "--tokenizer` (deprecated)", "--max-row-bytes",
                     "--learning-rate"):
        assert spelling in table
    assert "| `--learning-rate` |  | float | `0.001` | lr |" in table
