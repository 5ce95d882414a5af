import subprocess
import sys

from draftsmith import cli, resources


def test_every_cli_command_is_listed_in_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["no-such-stage"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_packaged_resources_are_installed():
    for path in (resources.smollm2_gguf(), resources.sharegpt_json(), resources.mtbench_questions(),
                 resources.gsm8k_test(), resources.humaneval()):
        assert path.exists(), path
    for name in ("qwen3", "llama3_1", "llama3", "gemma3", "deepseek_v3"):
        assert (resources.tokenizer_dir(name) / "tokenizer.json").exists()
    assert "{%" in resources.jinja_template("Qwen-Qwen3-0.6B")


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "draftsmith.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "prepare-data" in out.stdout
