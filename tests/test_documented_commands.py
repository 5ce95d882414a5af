"""Every command the docs show still parses: README.md, docs/*.md and ../shared/DESIGN.md.

Each `draftsmith ...`, `python scripts/*.py ...`, `torchrun ... scripts/*.py ...` and
`python bench/*.py ...` command in a code block or an inline code span is run up to the end of
its argument parsing (the real parser of that stage or script; the work itself is not done),
so a flag the docs show but the code no longer accepts fails here, naming the file and line.
Documented commands must use the current spellings: a deprecated spelling's warning fails the
test too (SpecForge's spellings in the seed commands are aliases and stay silent). Each stage's
`--help` runs as well.
"""

from __future__ import annotations

import argparse
import logging
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from draftsmith import cli

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO.parent / "shared" / "DESIGN.md"]
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _code_lines(path: Path):
    """(line number, text, fragment) of each shell line in fenced blocks (continuations joined) and
    of each inline code span (a fragment: prose may name a command with only the flags it discusses)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced, pending, start = False, "", 0
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield start, pending + line, False
            pending = ""
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield number, span, True


def _argv(text: str) -> tuple[list[str], bool] | None:
    """The command as [program, args...] with shell decoration removed, and whether the docs elided
    some of its arguments (`...`); None when the text is not a command."""
    text = text.split(" #", 1)[0].strip()
    if "$(" in text or "<" in text:
        return None
    try:
        tokens = shlex.split(text)
    except ValueError:
        return None
    for i, tok in enumerate(tokens):          # stop at pipes, redirects, command separators
        if tok in ("|", "||", "&&", ";", ">", ">>", "2>&1") or tok.startswith((">", "2>")):
            tokens = tokens[:i]
            break
    while tokens and (_ENV.match(tokens[0]) or tokens[0] in ("nice", "timeout", "env", "CI=true")):
        tokens = tokens[1:] if not tokens[0] in ("nice", "timeout") else tokens[1 + (tokens[1:2] == ["-n"]) + 1:]
    if not tokens:
        return None
    head = tokens[0].split("/")[-1]
    if head == "draftsmith" and len(tokens) > 1 and tokens[1] in cli.COMMANDS:
        program = "draftsmith"
        rest = tokens[1:]
    elif head in ("python", "python3", "torchrun"):
        script = next((i for i, t in enumerate(tokens) if t.endswith(".py")), None)
        if script is None or not re.match(r"^(scripts|bench)/[a-z0-9_]+\.py$", tokens[script]):
            return None
        program, rest = tokens[script], tokens[script + 1:]
    else:
        return None
    args, elided = [], "..." in rest or "…" in rest
    for tok in rest:
        if tok in ("...", "…") or tok.startswith("["):
            tok = tok.strip("[]")
            if tok in ("...", "…", ""):
                continue
        tok = tok.strip("[]").replace("...", "").replace("…", "")
        if re.match(r"^[A-Za-z0-9_.-]+(\|[A-Za-z0-9_.-]+)+$", tok):    # `online|offline`: the first choice
            tok = tok.split("|")[0]
        if tok:
            args.append(tok)
    return [program, *args], elided


def _label(path: Path) -> str:
    return "shared/DESIGN.md" if path == DOCS[-1] else str(path.relative_to(REPO))


def _commands_of(path: Path) -> list[tuple[int, list[str], bool]]:
    out = []
    for line, text, fragment in _code_lines(path):
        parsed = _argv(text)
        if parsed and (len(parsed[0]) > 2 or parsed[0][0] != "draftsmith"):
            out.append((line, parsed[0], parsed[1] or fragment))
    return out


def _documented():
    found = {}
    for path in DOCS:
        if path.exists():
            for line, argv, elided in _commands_of(path):
                found.setdefault((tuple(argv), elided), f"{_label(path)}:{line}")
    return sorted((where, list(argv), elided) for (argv, elided), where in found.items())


class _Parsed(Exception):
    pass


_PLACEHOLDER = re.compile(r"^(\$[A-Za-z_{}/.]+|[A-Z][A-Za-z0-9_]*)$")     # N, FILE, $M, $RUN/x


def _fill_placeholders(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """A placeholder after a flag (`--batch-size N`, `--chat-template NAME`) becomes a value of the
    flag's kind: its first choice, else the first of "1", "x" its type accepts."""
    out = list(sys.argv[1:] if args is None else args)
    for i in range(1, len(out)):
        action = parser._option_string_actions.get(out[i - 1].split("=")[0])
        if action is None or action.nargs == 0 or not _PLACEHOLDER.match(out[i]):
            continue
        if action.choices:
            out[i] = str(list(action.choices)[0])
            continue
        for candidate in ("1", "x"):
            try:
                (action.type or str)(candidate)
            except (argparse.ArgumentTypeError, TypeError, ValueError):
                continue
            out[i] = candidate
            break
    return out


class _ParseError(Exception):
    pass


def _parse_only(argv: list[str], monkeypatch) -> None:
    """Run the program until its parser has read argv, then stop; `_ParseError` with argparse's
    message when it does not parse."""
    original = argparse.ArgumentParser.parse_args

    def error(self, message):
        raise _ParseError(message)

    monkeypatch.setattr(argparse.ArgumentParser, "error", error)

    def parse_args(self, args=None, namespace=None):
        original(self, _fill_placeholders(self, args), namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    program, args = argv[0], argv[1:]
    with pytest.raises(_Parsed):
        if program == "draftsmith":
            cli.main(args)
        else:
            monkeypatch.setattr(sys, "argv", [program, *args])
            monkeypatch.syspath_prepend(str(REPO / Path(program).parent))
            runpy.run_path(str(REPO / program), run_name="__main__")


COMMANDS = _documented()


def test_the_docs_show_commands_of_every_kind():
    programs = {argv[0].split("/")[0] for _, argv, _ in COMMANDS}
    assert {"draftsmith", "scripts", "bench"} <= programs, programs
    stages = {argv[1] for _, argv, _ in COMMANDS if argv[0] == "draftsmith"}
    assert {"prepare-data", "build-dataset", "hidden-states", "train", "export", "eval", "demo"} <= stages
    # the seed interface of ../shared/DESIGN.md is also in README.md, so a clone without shared/ checks it too
    readme = {tuple(argv) for _, argv, _ in _commands_of(REPO / "README.md")}
    assert {a[0] for a in readme} >= {"scripts/prepare_data.py", "scripts/prepare_hidden_states.py",
                                      "scripts/train_eagle3_online.py"}
    if DOCS[-1].exists():
        design = {tuple(argv) for _, argv, _ in _commands_of(DOCS[-1])}
        assert design and design <= {tuple(argv) for _, argv, _ in COMMANDS}


@pytest.mark.parametrize("where, argv, elided", COMMANDS, ids=[f"{w} {' '.join(a[:2])}" for w, a, _ in COMMANDS])
def test_documented_command_parses(where, argv, elided, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="draftsmith"):
        try:
            _parse_only(argv, monkeypatch)
        except SystemExit as e:          # --help
            assert e.code == 0 and "--help" in argv, f"{where}: `{' '.join(argv)}` exited {e.code}"
        except _ParseError as e:
            # a fragment (`...`, or an inline mention) may leave out required arguments, nothing else
            if not (elided and "arguments are required" in str(e)):
                pytest.fail(f"{where}: `{' '.join(argv)}` does not parse: {e}")
    deprecated = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert not deprecated, f"{where}: documented with an old spelling: {deprecated}"


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_stage_help_runs(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"draftsmith {command}" in capsys.readouterr().out
