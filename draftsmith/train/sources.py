"""Feature sources: where a training batch's target features come from.

`OfflineSource` reads a feature store ✱; `OnlineSource` runs the target backend on
tokenized rows inside the loop. `build_sources(cfg, ...)` is the one place that makes
them from a `TrainConfig` (and the held-out split, train/evaluate.py) and gathers what the
draft needs from the target (`SourceSetup`). Both sources turn a list of sample indices
into the same right-padded batch dict, so the trainer never knows which one it holds
(with `row_sizes`, `--packing`: consecutive samples packed into rows, train/packing.py,
adding position_ids and doc_ids; online, the target still runs on each conversation alone).
`batch` is three steps that the training DataLoader (train/data.py) splits: `item(i)` (read,
decode, truncate one sample) and `collate` (pad or pack) in its worker processes, `finish`
(to the device; online, the target's forward) in the main process:

    input_ids, loss_mask, attention_mask   [B, T] int64
    aux_hidden_states                      [B, T, 3·Ht]
    hidden_state [B, T, Ht]  |  target_topk_ids, target_topk_logits [B, T, K]

The target's embeddings (the draft's frozen input table) and lm_head (the hidden-state
signal's projection) come from the live target online, and offline from the target's
checkpoint files alone (`load_target_weights`), without building the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from draftsmith import dist
from draftsmith.errors import DraftsmithError, InputError
from draftsmith.target.loading import load_config
from draftsmith.train.evaluate import SubsetSource, holdout_split
from draftsmith.train.packing import pack_items, split_padded


def pad_batch(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad token-aligned tensors of several samples to the longest one."""
    length = max(int(it["input_ids"].shape[0]) for it in items)
    out: dict[str, torch.Tensor] = {}
    names = [n for n in items[0] if isinstance(items[0][n], torch.Tensor)]
    for name in names:
        first = items[0][name]
        fill = float("-inf") if name == "target_topk_logits" else 0
        full = torch.full((len(items), length, *first.shape[1:]), fill, dtype=first.dtype)
        for row, it in enumerate(items):
            full[row, : it[name].shape[0]] = it[name]
        out[name] = full
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for row, it in enumerate(items):
        mask[row, : it["input_ids"].shape[0]] = 1
    out["attention_mask"] = mask
    return out


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class OfflineSource:
    """Batches from a feature store (decoded on read)."""

    def __init__(self, store, max_length: int | None = None):
        self.store = store
        self.max_length = max_length
        self.signal = store.signal
        # the hidden signal gives the full-vocab argmax through the lm_head; a top-K store only if it stored it
        self.has_target_argmax = self.signal == "hidden" or store.has_target_argmax

    def __len__(self) -> int:
        return len(self.store)

    @property
    def lengths(self) -> list[int]:
        return [min(n, self.max_length or n) for n in self.store.lengths]

    def item(self, i: int) -> dict[str, torch.Tensor]:
        """Sample i decoded and truncated (runs in the DataLoader's workers, train/data.py)."""
        item = {k: v for k, v in self.store[i].items() if isinstance(v, torch.Tensor)}
        if self.max_length:
            item = {k: v[: self.max_length] for k, v in item.items()}
        return item

    def collate(self, items: list[dict[str, torch.Tensor]], row_sizes: list[int] | None = None):
        return pack_items(items, row_sizes) if row_sizes else pad_batch(items)

    def finish(self, batch: dict[str, torch.Tensor], device: torch.device, row_sizes: list[int] | None = None):
        return to_device(batch, device)

    def batch(self, indices: list[int], device: torch.device,
              row_sizes: list[int] | None = None) -> dict[str, torch.Tensor]:
        return self.finish(self.collate([self.item(i) for i in indices], row_sizes), device, row_sizes)

    def prompt_ids(self, i: int) -> list[int]:
        raw = self.store.raw(i)
        return first_prompt(raw["input_ids"].tolist(), raw["loss_mask"].tolist())


class OnlineSource:
    """Batches from tokenized rows, with the target run on each batch."""

    signal = "hidden"
    has_target_argmax = True

    def __init__(self, dataset, target, max_length: int | None = None):
        self.dataset = dataset
        self.target = target
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def lengths(self) -> list[int]:
        return [min(len(ids), self.max_length or len(ids)) for ids in self.dataset["input_ids"]]

    def prompt_ids(self, i: int) -> list[int]:
        row = self.dataset[i]
        return first_prompt(row["input_ids"], row["loss_mask"])

    def item(self, i: int) -> dict[str, torch.Tensor]:
        row = self.dataset[i]
        ids, mask = row["input_ids"], row["loss_mask"]
        ids, mask = ids[: self.max_length or len(ids)], mask[: self.max_length or len(mask)]
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "loss_mask": torch.tensor(mask, dtype=torch.long)}

    def collate(self, items: list[dict[str, torch.Tensor]], row_sizes: list[int] | None = None):
        return pad_batch(items)          # the target runs on each conversation's own row (finish)

    def batch(self, indices: list[int], device: torch.device,
              row_sizes: list[int] | None = None) -> dict[str, torch.Tensor]:
        return self.finish(self.collate([self.item(i) for i in indices], row_sizes), device, row_sizes)

    def finish(self, batch: dict[str, torch.Tensor], device: torch.device,
               row_sizes: list[int] | None = None) -> dict[str, torch.Tensor]:
        """The target's features of a padded batch, in the main process (packed after, if asked)."""
        feats = self.target.features(batch["input_ids"], batch["attention_mask"])
        batch = to_device(batch, device)
        batch["aux_hidden_states"] = feats["aux_hidden_states"].to(device)
        batch["hidden_state"] = feats["hidden_state"].to(device)
        return pack_items(split_padded(batch), row_sizes) if row_sizes else batch


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a tensor-parallel target's DTensor weight (`--tp-size`), else `t`."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def first_prompt(input_ids: list[int], loss_mask: list[int]) -> list[int]:
    """The tokens before a row's first supervised token: the prompt of its first reply."""
    first = next((i for i, m in enumerate(loss_mask) if m), len(input_ids))
    return list(input_ids[:first])


# ----- data and weights behind the sources -------------------------------------------------------

@dataclass
class TargetWeights:
    embed: torch.Tensor      # [V, Ht], the draft's frozen input embeddings
    lm_head: torch.Tensor    # [V, Ht]


def load_target_weights(model_path: str, dtype: torch.dtype) -> TargetWeights:
    """The target's input embeddings and lm_head read from its safetensors files only (tied
    heads reuse the embeddings); other checkpoint formats load the model once."""
    root = Path(model_path)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(model_path, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as e:  # the hub raises many types; the message names the model
            raise DraftsmithError(f"cannot fetch target model {model_path}: {e}") from e
    config = load_config(root)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))
    files = _safetensors_files(root)
    embed = _find_tensor(files, "embed_tokens.weight")
    head = embed if tied else _find_tensor(files, "lm_head.weight")
    if embed is None or head is None:
        from draftsmith.target.hf import load_target

        target = load_target(str(root), dtype=dtype, device="cpu")
        embed = target.embed_tokens.weight.detach()
        head = target.lm_head_weight.detach()
        target.close()
    return TargetWeights(embed=embed.to(dtype), lm_head=head.to(dtype))


def _safetensors_files(root: Path) -> dict[str, Path]:
    """tensor name -> file, from model.safetensors(.index.json)."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: root / file for name, file in weight_map.items()}
    from safetensors import safe_open

    out = {}
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({name: file for name in f.keys()})
    return out


def _find_tensor(files: dict[str, Path], suffix: str) -> torch.Tensor | None:
    """The tensor named `suffix` (any prefix: model., model.language_model., ...), outside vision towers."""
    from safetensors import safe_open

    names = sorted((n for n in files if n.endswith(suffix) and "vision" not in n and "mtp" not in n), key=len)
    if not names:
        return None
    with safe_open(str(files[names[0]]), framework="pt") as f:
        return f.get_tensor(names[0])



def store_token_counts(store, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(supervised, all-token) counts per target id over a feature store's rows (data/vocab.py's inputs)."""
    supervised = np.zeros(vocab_size, dtype=np.int64)
    every = np.zeros(vocab_size, dtype=np.int64)
    for i in range(len(store)):
        raw = store.raw(i)
        ids = raw["input_ids"].long().numpy()
        every += np.bincount(ids, minlength=vocab_size)
        supervised += np.bincount(ids[raw["loss_mask"].bool().numpy()], minlength=vocab_size)
    return supervised, every


# ----- the one place that builds the sources -----------------------------------------------------

@dataclass
class SourceSetup:
    """The sources of a run and what the draft takes from the target."""

    train: object                     # OfflineSource | OnlineSource | evaluate.SubsetSource
    eval: object | None               # the held-out split, if any
    model_path: str                   # the target (for its config, tokenizer, lm_head)
    target_config: object             # transformers config of the target
    aux_layers: list[int]             # HF hidden_states indices fused by the draft
    embed: torch.Tensor               # [V, Ht] on the device
    lm_head: torch.Tensor             # [V, Ht]
    vocab_size: int
    target: object | None = None      # online: the live HFTarget
    store: object | None = None       # offline: the training FeatureStore (all its rows)
    data_dir: Path | None = None      # the tokenized training data (the draft vocab is counted on it)
    topk_draft_vocab: int | None = None   # a top-K store's draft vocab size: the draft must use it


def build_sources(cfg, info, dtype: torch.dtype) -> SourceSetup:
    """Online: load the target, tokenize (or reuse) the data. Offline: open the stores and read the
    target's embeddings / lm_head from its files. Then carve out --eval-holdout rows."""
    if cfg.mode == "online":
        from draftsmith.target.hf import load_target

        target = load_target(cfg.target_model_path, dtype=dtype, device=info.device, aux_layers=cfg.aux_layers,
                             tp_size=cfg.tp_size, trust_remote_code=cfg.trust_remote_code, stage="train")
        train_ds, data_dir = _tokenized(cfg, info, cfg.train_data_path, "--train-data-path")
        eval_source = None
        if cfg.eval_data_path:
            eval_ds, _ = _tokenized(cfg, info, cfg.eval_data_path, "--eval-data-path")
            eval_source = OnlineSource(eval_ds, target, cfg.max_length)
        setup = SourceSetup(train=OnlineSource(train_ds, target, cfg.max_length), eval=eval_source,
                            model_path=cfg.target_model_path, target_config=target.config,
                            aux_layers=list(target.aux_layers), embed=_plain(target.embed_tokens.weight),
                            lm_head=target.lm_head_weight, vocab_size=target.vocab_size, target=target,
                            data_dir=data_dir)
    else:
        setup = _offline(cfg, info, dtype)
    return _hold_out(cfg, setup)


def _offline(cfg, info, dtype: torch.dtype) -> SourceSetup:
    from draftsmith.features import FeatureStore

    store = FeatureStore.open(cfg.train_hidden_states_path)
    model_path = cfg.target_model_path or store.model
    if not model_path:
        raise InputError("the store names no model: give --target-model-path", field="--target-model-path")
    if cfg.aux_layers is not None and list(cfg.aux_layers) != store.aux_layers:
        raise InputError(f"the store holds aux layers {store.aux_layers}, not {list(cfg.aux_layers)}",
                         path=cfg.train_hidden_states_path, field="--aux-layers")
    eval_source = None
    if cfg.eval_hidden_states_path:
        eval_store = FeatureStore.open(cfg.eval_hidden_states_path)
        if eval_store.aux_layers != store.aux_layers:
            raise InputError("eval store has other aux layers than the train store",
                             path=cfg.eval_hidden_states_path, field="aux_layers")
        eval_source = OfflineSource(eval_store, cfg.max_length)
    weights = load_target_weights(model_path, dtype)
    data_dir = None
    if store.signal == "topk" or cfg.train_data_path:
        _, data_dir = _tokenized(cfg, info, cfg.train_data_path or store.data_path, "--train-data-path",
                                 model_path=model_path)
    return SourceSetup(train=OfflineSource(store, cfg.max_length), eval=eval_source, model_path=model_path,
                       target_config=load_config(model_path, cfg.trust_remote_code),
                       aux_layers=store.aux_layers, embed=weights.embed.to(info.device), lm_head=weights.lm_head,
                       vocab_size=int(weights.embed.shape[0]), store=store, data_dir=data_dir,
                       topk_draft_vocab=store.draft_vocab_size if store.signal == "topk" else None)


def _tokenized(cfg, info, path: str | None, flag: str, model_path: str | None = None):
    """(dataset, folder) of tokenized rows; rank 0 builds (or finds) them first, the others then hit the cache."""
    from draftsmith.data.build import load_tokenized

    if not path:
        raise InputError("no data path given (a top-K store needs the tokenized data it was made from)", field=flag)
    kwargs = dict(tokenizer=model_path or cfg.target_model_path, chat_template=cfg.chat_template,
                  max_length=cfg.max_length, is_preformatted=cfg.is_preformatted, flag=flag)
    if info.is_main:
        result = load_tokenized(path, **kwargs)
    dist.barrier()
    if not info.is_main:
        result = load_tokenized(path, **kwargs)
    return result


def _hold_out(cfg, setup: SourceSetup) -> SourceSetup:
    """--eval-holdout N: N training samples become the eval split (the draft vocab still counts them)."""
    if not cfg.eval_holdout:
        return setup
    n = len(setup.train)
    if cfg.eval_holdout >= n:
        raise InputError(f"cannot hold out {cfg.eval_holdout} of {n} samples", field="--eval-holdout")
    train_idx, eval_idx = holdout_split(n, cfg.eval_holdout, cfg.seed)
    setup.train, setup.eval = SubsetSource(setup.train, train_idx), SubsetSource(setup.train, eval_idx)
    return setup
