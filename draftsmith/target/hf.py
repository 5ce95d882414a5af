"""Hugging Face target backend: a tokenized batch -> EAGLE-3 features.

The aux features are the *inputs* of decoder layers `aux_layers` (HF
`output_hidden_states` indices, SGLang's EAGLE-3 convention [2, L//2, L-3]), captured
with forward pre-hooks (`AuxCapture`, also what eval's speculative decoding reads) so the
other L+1-3 hidden states are never kept. The base model
is called instead of the causal-LM head, so no full-vocabulary logits are computed; the
LM head is applied only where the caller asks (`topk`).

Batches are run right-padded with position ids counted over real tokens: a left-padded
batch is turned right-padded before the forward and back after, which makes the features
of a sample independent of the padding side and of its batch neighbours.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from draftsmith.errors import DraftsmithError
from draftsmith.target.dtype import resolve_dtype


def default_aux_layers(num_layers: int) -> list[int]:
    """SGLang's and vLLM's EAGLE-3 choice: the inputs of layers 2, L//2 and L-3.

    Below 7 layers those collide (4 layers give [2, 2, 1]); both engines would then fuse
    fewer than three distinct layers, so we refuse rather than train a draft that
    cannot be served.
    """
    ids = [2, num_layers // 2, num_layers - 3]
    if not ids[0] < ids[1] < ids[2]:
        raise DraftsmithError(
            f"a {num_layers}-layer target has no three distinct default EAGLE-3 aux layers "
            f"(2, L//2, L-3 = {ids}): pass --aux-layers with three increasing ids below {num_layers}")
    return ids


def _decoder_layers(decoder: nn.Module, num_layers: int) -> nn.ModuleList:
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers) >= num_layers:
            return layers
    for module in decoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise DraftsmithError(f"cannot find the {num_layers} decoder layers of {type(decoder).__name__}")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly tensor-parallel DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def right_pad_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row gather index that moves the real tokens to the front, keeping their order."""
    return torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (what its LM head reads), e.g. `LlamaModel` of `LlamaForCausalLM`."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


def num_hidden_layers(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


class AuxCapture:
    """The EAGLE-3 aux features of a forward: the inputs of decoder layers `aux_layers` (HF
    `output_hidden_states` indices) captured by forward pre-hooks, concatenated in that order.

    The one place draftsmith reads a target's aux features: the hidden-states stage and online
    training (`HFTarget`) and eval's speculative decoding (eval/spec_decode.py) all use it, so the
    draft is served the features it was trained on. Only the asked-for layers are kept (the other
    hidden states are never collected), and a forward with a KV cache (one token or a verify
    batch) captures just its new positions. State: the registered hooks and the last capture.
    """

    def __init__(self, decoder: nn.Module, aux_layers: list[int], num_layers: int):
        self.aux_layers = list(aux_layers)
        layers = _decoder_layers(decoder, num_layers)
        self._captured: dict[int, torch.Tensor] = {}
        self._hooks = [layers[i].register_forward_pre_hook(self._hook(i), with_kwargs=True)
                       for i in sorted(set(self.aux_layers))]

    @classmethod
    def for_model(cls, model: nn.Module, aux_layers: list[int]) -> "AuxCapture":
        """Hooks on a causal LM (or its decoder) `model`."""
        return cls(decoder_of(model), aux_layers, num_hidden_layers(model.config))

    def _hook(self, index: int):
        def hook(module, args, kwargs):
            self._captured[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    def take(self) -> torch.Tensor:
        """[..., len(aux_layers) * H] of the last forward (its new positions), then forgotten."""
        try:
            return torch.cat([self._captured[i] for i in self.aux_layers], dim=-1)
        finally:
            self._captured.clear()

    def clear(self) -> None:
        """Forget the last capture (a forward whose features are not needed)."""
        self._captured.clear()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._captured.clear()


class HFTarget:
    """A frozen HF causal LM with hooks on its aux layers (state: the model and its hooks)."""

    def __init__(self, model: nn.Module, aux_layers: list[int] | None = None):
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        text = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        self.num_layers = num_hidden_layers(self.config)
        self.hidden_size = int(text.hidden_size)
        self.vocab_size = int(text.vocab_size)
        self.aux_layers = list(aux_layers) if aux_layers is not None else default_aux_layers(self.num_layers)
        for i in self.aux_layers:
            if not 0 <= i < self.num_layers:
                raise DraftsmithError(f"aux layer {i} is outside 0..{self.num_layers - 1} "
                                      f"(HF output_hidden_states indices of a {self.num_layers}-layer model)")
        self.decoder = decoder_of(model)
        self._aux = AuxCapture(self.decoder, self.aux_layers, self.num_layers)
        self._head_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return _full(self.model.get_output_embeddings().weight)

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"aux_hidden_states": [B,T,len(aux)*H], "hidden_state": [B,T,H] post final norm}, model dtype.

        Rows at padded positions are zero.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        order = right_pad_order(attention_mask)
        ids = torch.gather(input_ids, 1, order)
        mask = torch.gather(attention_mask, 1, order)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        try:
            out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
            aux = self._aux.take()
        finally:
            self._aux.clear()
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        keep = mask.unsqueeze(-1).to(hidden.dtype)
        aux, hidden = _full(aux) * keep, _full(hidden) * keep
        inverse = torch.argsort(order, dim=1)
        return {
            "aux_hidden_states": torch.gather(aux, 1, inverse.unsqueeze(-1).expand(-1, -1, aux.shape[-1])),
            "hidden_state": torch.gather(hidden, 1, inverse.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])),
        }

    @torch.no_grad()
    def topk(self, hidden_state: torch.Tensor, draft_to_target: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of the target's logits restricted to the draft vocabulary, for rows [N, H].

        Returns draft-vocab ids [N, k] (int64) and their logits [N, k] in the model dtype.
        Only the Vd rows of the LM head that the draft can emit are multiplied.
        """
        cached = self._head_cache
        if cached is None or cached[0] is not draft_to_target:
            sub = self.lm_head_weight.index_select(0, draft_to_target.to(self.device))
            cached = self._head_cache = (draft_to_target, sub)
        head = cached[1]
        if k > head.shape[0]:
            raise DraftsmithError(f"top-k {k} exceeds the draft vocabulary size {head.shape[0]}")
        logits = hidden_state.to(head.dtype) @ head.T
        values, ids = torch.topk(logits, k, dim=-1, sorted=True)
        return ids, values

    def close(self) -> None:
        self._aux.close()


@contextlib.contextmanager
def _tp_groups(tp_size: int, world: int, device: torch.device):
    """For the length of a load, make transformers shard over this rank's group of `tp_size`
    consecutive ranks (draftsmith.dist's ("dp", "tp") layout) instead of over the whole world.

    transformers has no argument for a sub-mesh: `from_pretrained` overwrites any `device_mesh=`
    it is given with the mesh `initialize_distributed_mesh(distributed_config)` builds (5.24
    modeling_utils.py:4245-4249, 5.18 modeling_utils.py:4165-4167), and that function refuses a
    world larger than the product of the config's sizes (5.24 distributed/utils.py:312-317, 5.18
    distributed/utils.py:249-254). So the name `initialize_distributed_mesh` in
    transformers.distributed.mixin (5.24 mixin.py:187, 5.18 mixin.py:160), and only it, answers
    with a mesh whose "tp" sub-mesh is this rank's group:

    - 5.24 (DistributedConfig has `dp_replicate_size`): transformers' own function asked for
      dp_replicate_size = world // tp_size. Its dense mesh (pp, dp_replicate, fsdp, tp)
      (distributed/utils.py:298-325) then holds one tp group per replica, and the model's config
      keeps dp_replicate_size = 1, so `maybe_distribute_model` applies tensor parallelism over
      `get_mesh("tp")` and no FSDP (mixin.py:326-341).
    - 5.18 (no `dp_replicate_size`): a ("dp", "tp") mesh of our own and its 1-D "tp" sub-mesh, the
      shape that version's function returns for a TP-only config (distributed/utils.py:224-269);
      `maybe_distribute_model` shards over it as given (mixin.py:183-187).

    Sharding and loading use the mesh's local rank, never the global one, so the replicas are
    independent: each runs its forwards with collectives inside its own group only.
    """
    from transformers.distributed import DistributedConfig
    from transformers.distributed import mixin

    original = mixin.initialize_distributed_mesh
    dp = world // tp_size
    if "dp_replicate_size" in getattr(DistributedConfig, "__dataclass_fields__", {}):
        def build(config):
            return original(dataclasses.replace(config, dp_replicate_size=dp * config.dp_replicate_size))
    else:
        from transformers.distributed import utils as tdu

        if hasattr(tdu, "TransformersDeviceMesh"):  # a version between the two shapes above: not known
            raise DraftsmithError("this transformers version cannot shard over tensor-parallel groups smaller "
                                  f"than the world: use --tp-size {world} or transformers 5.18 / >= 5.24")

        def build(config):
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(device.type, (dp, tp_size), mesh_dim_names=("dp", "tp"))
            return device, mesh["tp"]
    mixin.initialize_distributed_mesh = build
    try:
        yield
    finally:
        mixin.initialize_distributed_mesh = original


def _tp_mesh_size(model: nn.Module) -> int | None:
    """The size of the mesh the model was sharded over (transformers keeps it as `_device_mesh`)."""
    mesh = getattr(model, "_device_mesh", None)
    return None if mesh is None else int(mesh["tp"].size() if mesh.ndim > 1 else mesh.size())


def load_target(model_path: str, dtype: torch.dtype | str = "auto", device: str | torch.device = "cpu",
                aux_layers: list[int] | None = None, tp_size: int = 1, trust_remote_code: bool = False,
                stage: str = "target") -> HFTarget:
    """Load an HF causal LM (local folder or hub name) as a frozen feature backend.

    `dtype` a name or 'auto' is resolved by draftsmith.target.dtype (bf16 on CUDA and on CPUs
    with native bf16, else float32) and logged under `stage`; a torch.dtype is used as given.

    `tp_size > 1` shards the model with transformers' tensor parallelism
    (`DistributedConfig(tp_size=...)`) over groups of `tp_size` consecutive torchrun ranks:
    the world is world // tp_size data-parallel replicas of one model each (8 ranks as 4 x TP 2;
    draftsmith.dist.dp_coords says which replica a rank is in). With one replica transformers
    builds its mesh as usual; with more, `_tp_groups` hands it the per-replica mesh. Every rank
    of a group must run the same forwards (they exchange activations), and each gets the full
    features. See docs/feature-store.md ("Distributed").
    """
    from draftsmith.target.loading import load_causal_lm

    if not isinstance(dtype, torch.dtype):
        dtype = resolve_dtype(dtype, device, stage)
    kwargs: dict = {}
    groups = contextlib.nullcontext()
    if tp_size > 1:
        import torch.distributed as dist
        from transformers.distributed import DistributedConfig

        world = dist.get_world_size() if dist.is_initialized() else 1
        if world % tp_size:
            raise DraftsmithError(f"--tp-size {tp_size} must divide the number of torchrun processes ({world}): "
                                  f"the world is cut into groups of {tp_size} ranks, one model replica each")
        kwargs["distributed_config"] = DistributedConfig(tp_size=tp_size)
        if world > tp_size:
            groups = _tp_groups(tp_size, world, torch.device(device))
    else:
        kwargs["device_map"] = {"": str(torch.device(device))}
    with groups:
        model = load_causal_lm(model_path, dtype, trust_remote_code, **kwargs)
    if tp_size > 1 and _tp_mesh_size(model) != tp_size:
        raise DraftsmithError(f"transformers sharded {model_path} over {_tp_mesh_size(model)} ranks, not the "
                              f"--tp-size {tp_size} asked for (an unsupported transformers version?)")
    return HFTarget(model, aux_layers)
