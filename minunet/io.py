"""Reading checkpoints safely: safetensors only (never pickle), memory-mapped, validated, loaded strictly.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the raw tensor bytes. We parse it ourselves so
that every way a file can be broken gets a message naming the file, and so tensors can be views of one
memory map (`torch.frombuffer`): loading a model then costs no second copy of the weights in RAM.
"""
import json
import mmap
import os
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: the message names the file and what is wrong."""


def refuse_pickle(path):
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: '{path.suffix}' files are Python pickles, which can run arbitrary code when loaded; "
            "minunet only reads .safetensors. Convert it once in an environment you trust, e.g. "
            "`python -c \"import torch, safetensors.torch as st; sd = torch.load('in.ckpt', weights_only=True); "
            "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items() "
            "if isinstance(v, torch.Tensor)}, 'out.safetensors')\"`")


def read_header(path):
    """Parse and validate a safetensors header -> (entries, data_start, file_size)."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} does not fit in {size} bytes; "
                                  "a pickle, a truncated download or another format?)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    data_start, data_len = 8 + n, size - 8 - n
    for key, e in header.items():
        if not isinstance(e, dict) or e.get("dtype") not in DTYPES or "data_offsets" not in e:
            raise CheckpointError(f"{path}: malformed header entry for '{key}': {e!r}")
        begin, end = e["data_offsets"]
        numel = 1
        for d in e["shape"]:
            numel *= d
        nbytes = numel * torch.empty((), dtype=DTYPES[e["dtype"]]).element_size()
        if end > data_len:
            raise CheckpointError(f"{path}: truncated: tensor '{key}' ends at byte {data_start + end} "
                                  f"but the file has {size} bytes (an interrupted download?)")
        if end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor '{key}' of shape {e['shape']} {e['dtype']} needs {nbytes} bytes, "
                                  f"the header gives {end - begin}")
    return header, data_start, size


def load_safetensors(path, keys=None):
    """{name: tensor} as zero-copy views of a private (copy-on-write) memory map of the file."""
    header, data_start, size = read_header(path)
    if size == data_start:  # empty file body: nothing to map
        return {k: torch.empty(e["shape"], dtype=DTYPES[e["dtype"]]) for k, e in header.items()}
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for key, e in header.items():
        if keys is not None and key not in keys:
            continue
        dtype, (begin, end) = DTYPES[e["dtype"]], e["data_offsets"]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end == begin:
            t = torch.empty(e["shape"], dtype=dtype)
        elif (data_start + begin) % itemsize:  # unaligned tensor (rare writers): copy it
            t = torch.frombuffer(bytearray(mm[data_start + begin:data_start + end]), dtype=dtype).reshape(e["shape"])
        else:
            t = torch.frombuffer(mm, dtype=dtype, count=(end - begin) // itemsize,
                                 offset=data_start + begin).reshape(e["shape"])
        out[key] = t
    return out


def check_state_dict(module, state_dict, source):
    """Strict check of names and shapes, with messages that list what is missing, extra or misshapen."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: " + ", ".join(unexpected[:20])
                        + (" ..." if len(unexpected) > 20 else ""))
    for k in sorted(set(expected) & set(state_dict)):
        if tuple(state_dict[k].shape) != expected[k]:
            problems.append(f"wrong shape for '{k}': expected {list(expected[k])}, found {list(state_dict[k].shape)}")
    if problems:
        raise CheckpointError(f"{source}: does not fit {type(module).__name__} -- " + "; ".join(problems[:30]))


def load_into(module, state_dict, source, dtype=None, device=None):
    """Check strictly, then assign the tensors (converted only where dtype/device differ) into a meta-built module."""
    check_state_dict(module, state_dict, source)
    params = {}
    for k, v in state_dict.items():
        target = dtype if (dtype is not None and v.is_floating_point()) else None
        params[k] = v.to(device=device, dtype=target) if (target is not None or device is not None) else v
    module.load_state_dict(params, strict=True, assign=True)
    return module


def hub_download(repo_id, filenames, subfolder=None):
    """Fetch only the named files of a Hub repo into the usual cache; offline, say how to pass a local file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    last = None
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, subfolder=subfolder))
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # offline and not cached: a subclass, not "no such file"
                raise CheckpointError(
                    f"{repo_id}: '{name}' is not in the local Hugging Face cache and the Hub cannot be reached "
                    "(offline). Download the file elsewhere and pass its local path (a .safetensors file or a "
                    "diffusers folder) instead of a repo id.") from None
            last = e
            continue
        except Exception as e:  # offline, no such repo, gated, ...
            raise CheckpointError(
                f"{repo_id}: could not fetch '{name}' from the Hugging Face Hub ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Without network, download the file elsewhere and pass "
                "its local path (a .safetensors file or a diffusers folder) instead of a repo id.") from None
    raise CheckpointError(f"{repo_id}: none of {filenames} found in subfolder {subfolder!r} on the Hub ({last})")


def looks_like_repo_id(source):
    s = str(source)
    return not os.path.exists(s) and s.count("/") == 1 and not s.endswith(".safetensors") and not s.startswith((".", "/"))


def load_folder_weights(folder, stem, variant=None):
    """`stem[.variant].safetensors` of a diffusers model folder, or its shards (`.safetensors.index.json`)
    -> (state dict, file). Pickle-only folders are refused with the conversion recipe."""
    folder = Path(folder)
    name = stem + (f".{variant}" if variant else "")
    file, index = folder / f"{name}.safetensors", folder / f"{name}.safetensors.index.json"
    if file.is_file():
        return load_safetensors(file), file
    if index.is_file():  # sharded: {"weight_map": {key: shard file}}
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for s in shards for k, v in load_safetensors(folder / s).items()}, index
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    pickles = [n for n in found if Path(n).suffix in PICKLE_SUFFIXES]
    if pickles:
        refuse_pickle(folder / pickles[0])  # raises, with the conversion recipe
    raise CheckpointError(f"{folder}: no {file.name}; found {found}"
                          + ("" if variant else f". Pass variant='fp16' for {stem}.fp16.safetensors."))
