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


def freeu_concat(h, hs, *, b, s, version=1):
    """Fused FreeU decoder input: cat([h[:, :C//2] * factor, h[:, C//2:], fourier_filter(hs, 1, s)], 1) in one
    write pass (see freeu_triton.py). Same contract as minunet.freeu.freeu_concat, which is its reference."""
    if not available():
        raise ModuleNotFoundError("minunet.kernels.freeu_concat needs triton: pip install triton "
                                  "(minunet.freeu.freeu_concat is the pure-torch equivalent)")
    from .freeu_triton import freeu_concat as fused
    return fused(h, hs, b=b, s=s, version=version)
