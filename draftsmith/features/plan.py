"""The hidden-states stage's plan: which rows go into which shard, and in which batches.

Contract: the plan is a pure function of the settings and the dataset. Rows are sorted by
length (longest first, so an out-of-memory shows at once) and cut into shards of about
`shard_mb` (`make_plan`); shard j belongs to data-parallel replica j % dp_size; a shard's
rows are batched in plan order, each sample computed at its length rounded up to
`pad_multiple` (`plan_batches`). Nothing here depends on the world size or the batch size,
which is why 1 process, N processes and a killed-then-resumed run write byte-identical
shards. `store_settings` is everything that changes the store's bytes: a rerun with other
settings is refused rather than mixed into the same folder.
"""

from __future__ import annotations

from pathlib import Path

from draftsmith.errors import DraftsmithError, InputError
from draftsmith.features.codecs import get_codec


def parse_target_signal(signal: str) -> int | None:
    """'hidden' -> None; 'topk:K' (or 'topk', K=32) -> K."""
    if signal == "hidden":
        return None
    if signal == "topk":
        return 32
    if signal.startswith("topk:"):
        try:
            k = int(signal[5:])
        except ValueError:
            k = 0
        if k > 0:
            return k
    raise DraftsmithError(f"--target-signal must be 'hidden' or 'topk:K' with K > 0, got {signal!r}")


def default_output_dir(target_model_path: str, data_path: str) -> Path:
    """cache/hidden_states/<model>-<data>: the store folder when --output-dir is not given."""
    from draftsmith.resources import cache_root

    model = Path(str(target_model_path).rstrip("/")).name
    data = Path(str(data_path).rstrip("/"))
    data_name = data.name if data.is_dir() else data.stem
    return cache_root() / "hidden_states" / f"{model}-{data_name}"


def local_or_name(path: str) -> str:
    """An absolute path for a local folder/file (so a store names its inputs from anywhere), else a hub name."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def row_lengths(ds, path: Path) -> list[int]:
    """Token count of every row; checks that loss_mask has the same length as input_ids."""
    import pyarrow.compute as pc

    table = ds.data.table
    n_ids = pc.list_value_length(table.column("input_ids")).to_pylist()
    n_mask = pc.list_value_length(table.column("loss_mask")).to_pylist()
    for i, (a, b) in enumerate(zip(n_ids, n_mask)):
        if a != b:
            raise InputError(f"loss_mask has {b} values for {a} input_ids", path=path, index=i, field="loss_mask")
    return [0 if a is None else int(a) for a in n_ids]


def make_plan(lengths: list[int], num_samples: int | None, max_length: int, shard_tokens: int) -> list[list[int]]:
    """Row indices per shard: the first `num_samples` non-empty rows, longest first, cut by token budget."""
    rows = [i for i, n in enumerate(lengths) if n > 0]
    if num_samples is not None:
        rows = rows[:num_samples]
    rows.sort(key=lambda i: (-min(lengths[i], max_length), i))
    shards, current, tokens = [], [], 0
    for i in rows:
        current.append(i)
        tokens += min(lengths[i], max_length)
        if tokens >= shard_tokens:
            shards.append(current)
            current, tokens = [], 0
    if current:
        shards.append(current)
    return shards


def bytes_per_token(codec: str, hidden_size: int, num_aux: int, topk: int | None,
                    supervised_fraction: float = 1.0, logit_bytes: int = 2) -> float:
    """Stored bytes per token: ids (4) + loss mask (1) + aux rows + target signal (top-K: K ids and
    logits plus the full-vocab argmax id per supervised row)."""
    c = get_codec(codec)
    signal = c.row_bytes(hidden_size) if topk is None else supervised_fraction * (topk * (4 + logit_bytes) + 4)
    return 5 + c.row_bytes(num_aux * hidden_size) + signal


def padded_width(length: int, pad_multiple: int) -> int:
    """The width a sample is always computed at: its length rounded up to `pad_multiple`."""
    return -(-length // pad_multiple) * pad_multiple


def plan_batches(rows: list[int], lengths: list[int], max_length: int, batch_size: int,
                 pad_multiple: int) -> list[tuple[list[int], int]]:
    """(rows, width) batches of a shard: consecutive rows sharing a padded width, <= batch_size each.

    A sample is thus computed at the same width, right-padded, whatever the batch size,
    which makes its features (and the store's bytes) independent of the batch size.
    """
    out: list[tuple[list[int], int]] = []
    for i in rows:
        width = padded_width(min(lengths[i], max_length), pad_multiple)
        if out and out[-1][1] == width and len(out[-1][0]) < batch_size:
            out[-1][0].append(i)
        else:
            out.append(([i], width))
    return out


def store_settings(target_model_path: str, data_fingerprint: str, num_samples: int, max_length: int,
                   aux_layers: list[int], dtype: str, codec: str, topk: int | None, vocab_digest: str | None,
                   shard_tokens: int, pad_multiple: int) -> dict:
    """Everything that changes the store's bytes (the batch size and world size do not)."""
    return {"model": local_or_name(target_model_path), "data": data_fingerprint, "num_samples": num_samples,
            "max_length": max_length, "aux_layers": aux_layers, "dtype": dtype,
            "codec": codec, "target_signal": "hidden" if topk is None else f"topk:{topk}",
            "draft_vocab": vocab_digest, "shard_tokens": shard_tokens, "pad_multiple": pad_multiple}
