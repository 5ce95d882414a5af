"""The hidden-states stage end to end: seed flags, kill -9 + resume, torchrun with 2 gloo ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from draftsmith import cli
from draftsmith.features import FeatureStore
from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states

from _hidden_states_helpers import make_tokenized, one_torch_thread, store_files  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "prepare_hidden_states.py"


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _seed_flags(model, data, out, batch_size=4, tp_size=1, num_samples=1000):
    """The documented command line, verbatim, plus the output folder."""
    return ["--model-path", str(model), "--enable-aux-hidden-states", "--data-path", str(data),
            "--chat-template", "llama3", "--max-length", "2048", "--tp-size", str(tp_size),
            "--batch-size", str(batch_size), "--mem-frac=0.75", "--num-samples", str(num_samples),
            "--output-path", str(out), "--no-progress"]


def test_seed_flags_are_accepted_and_run(tiny_llama_dir, tmp_path):
    data = make_tokenized(tmp_path / "data", 7)
    parser, _ = cli.build_parser("hidden-states")
    args = parser.parse_args(_seed_flags(tiny_llama_dir, data, tmp_path / "x", tp_size=8) + [
        "--tokenizer-path", "t", "--is-preformatted", "--aux-layers", "1,2,3", "--dtype", "float32", "--codec", "fp8",
        "--target-signal", "topk:16", "--draft-vocab-size", "8000", "--force"])
    assert (args.tp_size, args.mem_frac, args.num_samples, args.aux_layers) == (8, 0.75, 1000, [1, 2, 3])
    assert args.enable_aux_hidden_states and args.is_preformatted and args.force
    assert cli.run_command("hidden-states", _seed_flags(tiny_llama_dir, data, tmp_path / "s", num_samples=5)) == 0
    store = FeatureStore.open(tmp_path / "s")
    assert len(store) == 5 and store.manifest["codec"] == "int4"
    assert [s["index"] for s in store.samples] == [0, 1, 2, 3, 4]


def test_cli_errors_are_reported_without_traceback(tiny_llama_dir, tmp_path, capsys):
    assert cli.run_command("hidden-states", _seed_flags(tiny_llama_dir, tmp_path / "none", tmp_path / "s")) == 2
    assert "no such file" in capsys.readouterr().err
    data = make_tokenized(tmp_path / "data", 3)
    flags = _seed_flags(tiny_llama_dir, data, tmp_path / "s") + ["--target-signal", "topk:x"]
    assert cli.run_command("hidden-states", flags) == 2
    assert "topk:K" in capsys.readouterr().err


def _run(model, data, out, batch_size):
    return run_hidden_states(HiddenStatesConfig(target_model_path=str(model), data_path=str(data), output_dir=str(out),
                                                batch_size=batch_size, shard_mb=0.004, progress=False))


def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_llama_dir, tmp_path):
    data = make_tokenized(tmp_path / "data", 80, max_len=50)
    reference = _run(tiny_llama_dir, data, tmp_path / "ref", batch_size=4)
    assert reference["shards"] >= 20

    out = tmp_path / "killed"
    flags = _seed_flags(tiny_llama_dir, data, out, batch_size=3) + ["--shard-mb", "0.004"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *flags], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((out / "shards").glob("*.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "manifest.json").exists()
    done = sorted((out / "shards").glob("*.json"))
    assert 3 <= len(done) < reference["shards"]
    # the other states a kill can leave: a shard renamed before its index, a half-written temp file
    done[0].unlink()
    (out / "shards" / ".shard-00099.safetensors.123.tmp").write_bytes(b"partial")

    resumed = _run(tiny_llama_dir, data, out, batch_size=5)  # another batch size: same bytes
    assert resumed["shards_written"] == reference["shards"] - len(done) + 1
    assert resumed["tokens_this_run"] < reference["tokens"]
    assert store_files(out) == store_files(tmp_path / "ref")
    store = FeatureStore.open(out)
    assert sorted(store.ids) == sorted(f"row-{i}" for i in range(80)) and len(set(store.ids)) == 80


def test_torchrun_two_gloo_ranks_write_the_same_store(tiny_llama_dir, tmp_path):
    data = make_tokenized(tmp_path / "data", 24, max_len=40)
    single = tmp_path / "one"
    _run(tiny_llama_dir, data, single, batch_size=4)
    out = tmp_path / "two"
    flags = _seed_flags(tiny_llama_dir, data, out) + ["--shard-mb", "0.004"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(SCRIPT), *flags], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[:4000] + "\n...\n" + done.stderr[-4000:]
    assert "24 samples" in done.stderr
    assert store_files(out) == store_files(single)


def test_torchrun_tensor_parallel_over_two_gloo_ranks(tiny_llama_dir, tmp_path):
    """--tp-size 2: one replica sharded over both ranks (HF tensor parallelism works on gloo)."""
    import torch

    data = make_tokenized(tmp_path / "data", 6, max_len=30)
    single = tmp_path / "one"
    run_hidden_states(HiddenStatesConfig(target_model_path=str(tiny_llama_dir), data_path=str(data), output_dir=str(single),
                                         codec="bf16", dtype="float32", progress=False))
    out = tmp_path / "tp"
    flags = _seed_flags(tiny_llama_dir, data, out, tp_size=2) + ["--codec", "bf16", "--dtype", "float32"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(SCRIPT), *flags], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = FeatureStore.open(single), FeatureStore.open(out)
    assert a.ids == b.ids
    for i in range(len(a)):
        for key in ("aux_hidden_states", "hidden_state"):  # sharded matmuls sum in another order
            torch.testing.assert_close(b[i][key], a[i][key], rtol=2 ** -7, atol=1e-4)
