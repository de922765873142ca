"""Fused GPU kernels (Triton, optional: `pip install triton`; the package imports and runs without it).

Kernels run on CUDA tensors, or on CPU tensors through Triton's interpreter: set TRITON_INTERPRET=1 before the
first kernel call (Triton reads it when a kernel module is imported, i.e. when its kernels are decorated).
"""
import importlib.util
import os


def _find_triton():
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken install, or an import blocker: no kernels
        return False


_TRITON = _find_triton()  # checked once, without importing triton


def available():
    """True when triton is installed."""
    return _TRITON


def interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_module():
    if not available():
        raise ModuleNotFoundError("minunet.kernels needs triton: pip install triton "
                                  "(minunet.blocks.freeu.freeu_concat is the pure-torch equivalent)")
    from . import freeu_triton
    return freeu_triton


def fused_decoder_input(h, hs, *, b, s, weight=None):
    """Fused FreeU decoder input: cat([h[:, :C//2] * factor, h[:, C//2:], fourier_filter(hs, 1, s)], 1) in one
    write pass (see freeu_triton.py); factor = b, or 1 + (b - 1) * weight with a (B, 1, H, W) fp32 map (version 2).
    minunet.blocks.freeu.fused_freeu_concat gives it the contract of freeu_concat, its pure-torch reference."""
    return _triton_module().launch_decoder_input(h, hs, b=b, s=s, weight=weight)


def channel_mean(h):
    """(B, C, H, W) -> (B, 1, H, W) fp32 channel mean, by a Triton reduction (version 2's map before normalising)."""
    return _triton_module().channel_mean(h)
