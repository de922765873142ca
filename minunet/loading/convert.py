"""`minunet convert IN OUT.safetensors`: the one place minunet reads a pickled checkpoint (.ckpt, .bin, .pt, .pth).

The pickle is read with `torch.load(weights_only=True)`, PyTorch's restricted unpickler: it rebuilds tensors and
plain containers (dict, list, int, str, ...) and refuses every other global, so a pickle whose `__reduce__` would
run code is rejected before anything runs. Then:
- nested `state_dict` entries are unwrapped (Lightning / CompVis checkpoints: {"state_dict": {...}, "epoch": ...});
- only tensors are kept (step counters and the like are listed as dropped);
- tensors that share memory (tied weights, views of one storage) are written as separate copies: a safetensors
  file cannot alias two names to the same bytes, and after loading no in-place update of one changes the other;
- `dtype` (e.g. torch.float16) casts the floating tensors;
- the result is written to a temporary file, read back with minunet's strict reader and compared tensor by
  tensor, and only then renamed to OUT, so OUT is never a partial or unverified file.
"""
import os
import pickle
from pathlib import Path

import torch

from .io import PICKLE_SUFFIXES, CheckpointError, load_safetensors

MAX_NESTING = 4  # {"state_dict": {"state_dict": ...}} levels unwrapped at most


def convert(src, dst, dtype=None):
    """Convert the pickled checkpoint `src` to `dst` (.safetensors) -> summary dict; CheckpointError if refused."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"convert: the output {dst} must end in .safetensors")
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file")
    if src.suffix == ".safetensors":
        raise CheckpointError(f"{src}: already a safetensors file; nothing to convert")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"convert: dtype must be a floating type, got {dtype}")
    state, dropped = tensors_of(read_pickle(src), src)
    state, shared = unshare(state)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    _write_verified(state, dst)
    return {"tensors": len(state), "shared_copied": shared, "dropped": dropped, "bytes": dst.stat().st_size}


def read_pickle(src):
    """torch.load(weights_only=True): tensors and plain containers only; anything else is refused unrun."""
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines()
        reason = next((line for line in lines if "GLOBAL" in line or "global" in line), None)
        if reason is not None:  # the restricted unpickler met a class / function it does not allow
            raise CheckpointError(f"{src}: refused: this pickle needs more than tensors and plain containers, so it "
                                  f"could run code ({reason.strip()}); nothing from it was run or written") from None
        raise CheckpointError(f"{src}: not a readable PyTorch checkpoint ({lines[0] if lines else e!r})") from None
    except Exception as e:  # not a pickle, truncated zip, ...
        raise CheckpointError(f"{src}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def tensors_of(obj, src):
    """The {name: tensor} inside a loaded checkpoint -> (state, names of dropped non-tensor entries)."""
    for _ in range(MAX_NESTING):
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{src}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    state, dropped = {}, []
    for k, v in obj.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{src}: state-dict keys must be strings, found {k!r}")
        if isinstance(v, torch.Tensor):
            state[k] = v
        else:
            dropped.append(k)
    if not state:
        raise CheckpointError(f"{src}: no tensors in it (entries: {sorted(map(str, obj))[:10]})")
    return state, sorted(dropped)


def unshare(state):
    """Contiguous tensors that own their bytes -> (state, number of tensors that shared memory with another)."""
    owners, shared, out = set(), 0, {}
    for k, v in state.items():
        storage = v.untyped_storage()
        whole = v.is_contiguous() and v.storage_offset() == 0 and storage.nbytes() == v.numel() * v.element_size()
        again = v.numel() > 0 and storage.data_ptr() in owners
        if again or not whole:
            v = v.clone(memory_format=torch.contiguous_format)
        shared += again
        owners.add(storage.data_ptr())
        out[k] = v
    return out, shared


def _same_bytes(a, b):  # NaN-safe, unlike torch.equal
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


def _write_verified(state, dst):
    import safetensors.torch as st

    tmp = dst.with_name(dst.name + ".partial")
    try:
        st.save_file(state, str(tmp))
        back = load_safetensors(tmp)
        if set(back) != set(state):
            raise CheckpointError(f"{dst}: verification failed: written keys differ from the checkpoint's")
        for k, v in state.items():
            if not _same_bytes(back[k], v):
                raise CheckpointError(f"{dst}: verification failed: tensor '{k}' reads back differently")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_pickle(path):
    return Path(path).suffix.lower() in PICKLE_SUFFIXES
