"""Which dtype a model runs in: the one parser of dtype names and the one `auto` policy.

Every stage that runs a model (hidden-states, online training's target, regenerate-data,
eval, the demo) and the trainer's `--autocast auto` ask this module; `--dtype NAME`
overrides it everywhere.

`auto` picks bfloat16 only where bf16 matmuls are native:

| device | auto | why |
|---|---|---|
| CUDA (any accelerator) | bfloat16 | tensor cores; half the memory |
| CPU with AVX512-BF16 or AMX | bfloat16 | oneDNN runs bf16 GEMMs natively |
| any other CPU (AVX2-only x86, ARM, ...) | float32 | bf16 is converted to fp32 around every GEMM: measured 3.5× slower than fp32 on an AVX2 EPYC (docs/benchmarks.md, "CPU dtype") |

The CPU probe is torch's own (`torch.cpu._is_avx512_bf16_supported`, `_is_amx_tile_supported`,
cpuinfo-backed, torch ≥ 2.1: torch/cpu/__init__.py); `torch.backends.cpu.get_cpu_capability()`
is logged beside it but cannot tell AVX512 with bf16 from AVX512 without.

`exact=True` (eval) keeps float32 on every device under `auto`: the lossless check compares
one batched verify forward with one-token forwards, and only fp32 keeps those bit-comparable
(bf16 rounding can flip an argmax tie).

The choice and its reason are logged (draftsmith.logs, rank 0) at the start of each stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draftsmith.errors import DraftsmithError
from draftsmith.logs import get_logger

log = get_logger(__name__)

NAMES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                                 "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
CHOICES = ("auto", "bfloat16", "float16", "float32")   # what a --dtype flag offers (the short names also parse)
DTYPE_HELP = ("auto (default): bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), float32 on "
              "other CPUs; or bfloat16 | float16 | float32")


def parse_dtype(name: str | torch.dtype, flag: str = "--dtype") -> torch.dtype:
    """A concrete dtype from its name ('auto' is not one: see `resolve_dtype`)."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return NAMES[str(name).removeprefix("torch.")]
    except KeyError:
        raise DraftsmithError(f"{flag}: unknown dtype {name!r}; choose one of {', '.join(CHOICES)}") from None


def check_dtype_name(name: str | torch.dtype, flag: str = "--dtype") -> None:
    """Raise on a name that neither `auto` nor `parse_dtype` accepts (for config validation)."""
    if name != "auto":
        parse_dtype(name, flag)


def cpu_native_bf16() -> list[str]:
    """The native-bf16 instruction sets of this CPU ([] when bf16 would be emulated)."""
    found = []
    if torch.cpu._is_avx512_bf16_supported():
        found.append("AVX512-BF16")
    if torch.cpu._is_amx_tile_supported():
        found.append("AMX")
    return found


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_dtype(requested: str | torch.dtype | None, device: str | torch.device, exact: bool = False) -> DtypeChoice:
    """`requested` (a name, a dtype, or None/'auto') -> the dtype to run in, and why."""
    if requested not in (None, "auto"):
        return DtypeChoice(parse_dtype(requested), "asked for with --dtype")
    device = torch.device(device)
    if exact:
        return DtypeChoice(torch.float32, "auto: float32 keeps the lossless check exact, bf16 rounding differs "
                                          "between batched and one-token forwards")
    if device.type != "cpu":
        return DtypeChoice(torch.bfloat16, f"auto: bf16 is native on {device.type}")
    native = cpu_native_bf16()
    capability = torch.backends.cpu.get_cpu_capability()
    if native:
        return DtypeChoice(torch.bfloat16, f"auto: this CPU has native bf16 ({' and '.join(native)})")
    return DtypeChoice(torch.float32, f"auto: this CPU has no native bf16 (neither AVX512-BF16 nor AMX; torch "
                                      f"CPU capability {capability}): bf16 would be emulated, slower than fp32")


def resolve_dtype(requested: str | torch.dtype | None, device: str | torch.device, stage: str,
                  what: str = "target", exact: bool = False) -> torch.dtype:
    """`choose_dtype`, logged as '<stage>: <what> dtype <name> (<reason>)'."""
    choice = choose_dtype(requested, device, exact)
    log.info("%s: %s dtype %s on %s; %s", stage, what, choice.name, torch.device(device).type, choice.reason)
    return choice.dtype


def resolve_autocast(mode: str, device: str | torch.device, stage: str = "train") -> torch.dtype | None:
    """`--autocast auto|bf16|off` -> the autocast dtype (None: no autocast), logged."""
    if mode == "off":
        choice = DtypeChoice(torch.float32, "asked for with --autocast off")
    elif mode == "bf16":
        choice = DtypeChoice(torch.bfloat16, "asked for with --autocast bf16")
    elif mode == "auto":
        choice = choose_dtype("auto", device)
    else:
        raise DraftsmithError(f"--autocast: must be auto, bf16 or off, got {mode!r}")
    on = choice.dtype == torch.bfloat16
    log.info("%s: draft matmuls %s on %s; %s (weights and optimizer state stay fp32)", stage,
             "in bf16 autocast" if on else "in fp32, no autocast", torch.device(device).type, choice.reason)
    return torch.bfloat16 if on else None
