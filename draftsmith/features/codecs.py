"""Feature codecs: how a [N, D] float activation matrix is stored, row by row.

Every codec works on each row (one token) independently and returns parts whose first
dimension is N, so a sample's rows are a plain row slice of every part, and encoding a
batch's tokens together gives the same bytes as encoding them one sample at a time.

| codec | stores | bits/value | error bound per value x (row/group stats) |
|---|---|---|---|
| bf16 | x as bfloat16 | 16 | 0 if the target runs in bf16; else ≤ 2^-9·|x| (rounding) |
| fp8  | e4m3 of x/s, s = amax(row)/448 (fp32) | 8 + 32/D | ≤ 2^-4·|x| + 2^-10·s |
| int4 | uint4 of (x-m)/s per group of 64, m ≤ min, s ≥ (max-m)/15 (bf16) | 4.5 | ≤ s/2 ≈ (max-min)/30 |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from draftsmith.errors import DraftsmithError

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT4_GROUP = 64


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    decode: Callable[[dict[str, torch.Tensor], int], torch.Tensor]
    row_bytes: Callable[[int], int]  # stored bytes for one row of width D
    description: str


def _encode_bf16(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"v": x.to(torch.bfloat16).contiguous()}


def _decode_bf16(parts: dict[str, torch.Tensor], dim: int) -> torch.Tensor:
    return parts["v"].float()


def _encode_fp8(x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"q": q.contiguous(), "scale": scale.contiguous()}


def _decode_fp8(parts: dict[str, torch.Tensor], dim: int) -> torch.Tensor:
    return parts["q"].float() * parts["scale"].float()


def _round_up_bf16(v: torch.Tensor) -> torch.Tensor:
    """The nearest bf16 value >= v (v >= 0): rounding to nearest may land one ulp low."""
    r = v.to(torch.bfloat16)
    return torch.where(r.float() < v, (v * (1 + 2 ** -7)).to(torch.bfloat16), r)


def _round_down_bf16(v: torch.Tensor) -> torch.Tensor:
    """The nearest bf16 value <= v."""
    r = v.to(torch.bfloat16)
    return torch.where(r.float() > v, (v - v.abs() * 2 ** -7).to(torch.bfloat16), r)


def _groups(dim: int) -> int:
    return math.ceil(dim / INT4_GROUP)


def _encode_int4(x: torch.Tensor) -> dict[str, torch.Tensor]:
    n, dim = x.shape
    g = _groups(dim)
    x = x.float()
    if g * INT4_GROUP != dim:
        x = torch.nn.functional.pad(x, (0, g * INT4_GROUP - dim))
    xg = x.view(n, g, INT4_GROUP)
    lo = _round_down_bf16(xg.amin(dim=-1))
    step = _round_up_bf16((xg.amax(dim=-1) - lo.float()) / 15.0)
    s, m = step.float().unsqueeze(-1), lo.float().unsqueeze(-1)
    q = torch.where(s > 0, torch.round((xg - m) / torch.where(s > 0, s, 1.0)), 0.0).clamp(0, 15)
    q = q.to(torch.uint8).view(n, g * INT4_GROUP)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return {"q": packed.contiguous(), "scale": step.contiguous(), "min": lo.contiguous()}


def _decode_int4(parts: dict[str, torch.Tensor], dim: int) -> torch.Tensor:
    packed = parts["q"]
    n = packed.shape[0]
    q = torch.stack([packed & 0x0F, packed >> 4], dim=-1).view(n, -1, INT4_GROUP).float()
    x = q * parts["scale"].float().unsqueeze(-1) + parts["min"].float().unsqueeze(-1)
    return x.view(n, -1)[:, :dim]


CODECS: dict[str, Codec] = {
    "bf16": Codec("bf16", _encode_bf16, _decode_bf16, lambda d: 2 * d,
                  "bfloat16 copy: exact for a bf16 target"),
    "fp8": Codec("fp8", _encode_fp8, _decode_fp8, lambda d: d + 4,
                 "float8 e4m3 with one fp32 scale per token"),
    "int4": Codec("int4", _encode_int4, _decode_int4,
                  lambda d: _groups(d) * (INT4_GROUP // 2 + 4),
                  "asymmetric 4-bit, groups of 64 values with a bf16 scale and bf16 minimum (4.5 bits/value)"),
}
DEFAULT_CODEC = "int4"


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise DraftsmithError(f"unknown codec {name!r}: choose one of {sorted(CODECS)}") from None


def bits_per_value(name: str, dim: int) -> float:
    return 8.0 * get_codec(name).row_bytes(dim) / dim
