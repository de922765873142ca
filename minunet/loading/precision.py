"""dtype="auto": the dtype (and memory layout) a model runs fastest in on this machine without losing range.

    CUDA                              float16 (the VAE decodes in float32 where its config says force_upcast)
    a CPU with native bfloat16        bfloat16 (AVX512-BF16 or AMX: Zen 4, Sapphire Rapids and later), and the
                                      UNet's convolutions in channels_last, measured faster there (README, "Speed")
    anything else                     float32

bfloat16 has float32's range, so nothing overflows (the VAE too) and no upcast is needed; it keeps 8 bits of
mantissa, which is what it costs in accuracy (README, "Speed": the same as diffusers in bfloat16).
"""
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def native_bf16():
    """Whether this CPU computes bfloat16 natively: PyTorch's own check where it has one, else /proc/cpuinfo's flags."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is not None and amx is not None:
        return bool(avx512_bf16() or amx())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype, device=None):
    """None or a torch dtype: itself; "auto": float16 on CUDA, bfloat16 on a CPU with native bf16, else float32;
    "float32" / "float16" / "bfloat16": that dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != "auto":
        raise ValueError(f"dtype={dtype!r}: expected a torch dtype, None, 'auto' or one of {sorted(DTYPES)}")
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        return torch.float16
    return torch.bfloat16 if kind == "cpu" and native_bf16() else torch.float32


def auto_channels_last(dtype, device=None):
    """Whether dtype="auto" also puts the image UNet in channels_last: with bfloat16 on the CPU, where it was
    measured faster (benchmarks/speed.py --layouts)."""
    return dtype == "auto" and (device is None or torch.device(device).type == "cpu") and \
        resolve_dtype(dtype, device) == torch.bfloat16
