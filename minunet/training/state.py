"""Training state in safetensors files (no pickle): parameters, their EMA, AdamW's moments and the step, so a run
stopped at step k and resumed gives the parameters of a run that never stopped (every random draw is a function of
the seed and the step; see minunet.training.tiny)."""
import json
import os

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..loading.io import load_safetensors, read_header


def read_metadata(path):
    """The file's `__metadata__` strings (after the header check of minunet.io)."""
    from safetensors import safe_open

    read_header(path)
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def save_state(path, step, model, ema, optimizer, info):
    """model / ema: {name: tensor}; optimizer: an AdamW over model's parameters in name order; info: a dict
    that must match on resume (stage, seed, batch, steps, ...)."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.items()}
    tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.items()})
    for i, s in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{i}.{k}": torch.as_tensor(v).contiguous() for k, v in s.items()})
    meta = {"step": str(step), "info": json.dumps(info, sort_keys=True)}
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)  # a run killed while writing leaves the previous checkpoint whole


def load_state(path, model, ema, optimizer, info):
    """Fill model / ema (dicts of tensors, in place) and the optimizer from `path`; -> the step it was saved at.
    A checkpoint of another recipe, seed, batch or step count is refused, naming the field."""
    meta = read_metadata(path)
    saved = json.loads(meta.get("info", "{}"))
    for key, want in info.items():
        if saved.get(key) != want:
            raise CheckpointError(f"{path}: cannot resume: it was saved with {key}={saved.get(key)!r}, this run has "
                                  f"{key}={want!r} (resume with the same options, or use another --out)")
    tensors = load_safetensors(path)
    with torch.no_grad():
        for prefix, target in (("model.", model), ("ema.", ema)):
            for k, v in target.items():
                v.copy_(tensors[prefix + k])
    state = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return int(meta["step"])
