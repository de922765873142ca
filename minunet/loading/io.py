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

from ..errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}


def refuse_pickle(path):
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: '{path.suffix}' files are Python pickles, which can run arbitrary code when loaded; "
            "minunet's loaders only read .safetensors. Convert it once with `minunet convert "
            f"{path} {path.with_suffix('.safetensors')}` (PyTorch's restricted unpickler: tensors only, no code).")


def read_header(path):
    """Parse and validate a safetensors header -> (entries, data_start, file_size).

    The safetensors library validates the header first (its Rust parser: offsets non-negative, ordered,
    contiguous, non-overlapping and covering the data section exactly; shapes non-negative ints whose product
    times the dtype size is the byte length; metadata str -> str; bounded size), then we read it into Python
    with duplicate keys refused and keep only dtypes PyTorch can hold."""
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
        raw = f.read(n)
    _validate_with_safetensors(path, raw, size - 8 - n)
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
    except ValueError as e:  # a duplicate key (the library keeps one of them silently)
        raise CheckpointError(f"{path}: invalid safetensors header: {e}") from None
    header.pop("__metadata__", None)
    for key, e in header.items():
        if e["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{key}' has dtype {e['dtype']}, which minunet does not read "
                                  f"(supported: {', '.join(DTYPES)})")
    return header, 8 + n, size


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate keys {dup[:5]}")
    return dict(pairs)


def _validate_with_safetensors(path, raw, data_len):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as e:
        truncated = _truncation(raw, data_len)
        if truncated is not None:
            raise CheckpointError(f"{path}: truncated: {truncated}") from None
        reason = str(e).removeprefix("Error while deserializing header: ")
        raise CheckpointError(f"{path}: invalid safetensors file: {reason}") from None


def _truncation(raw, data_len):
    """Which tensor runs past the end of a file whose header is sound but whose data is short, else None."""
    try:
        ends = {k: e["data_offsets"][1] for k, e in json.loads(raw).items() if k != "__metadata__"}
        key = max(ends, key=ends.get)
        if isinstance(ends[key], int) and ends[key] > data_len:
            start = 8 + len(raw)
            return (f"tensor '{key}' ends at byte {start + ends[key]} but the file has {start + data_len} bytes "
                    "(an interrupted download?)")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        pass
    return None


def read_json(path, what="config"):
    """A JSON object from a config file, or one CheckpointError naming the file (missing, not UTF-8, not JSON,
    not an object). Every config minunet reads goes through here."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what} file")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: {what} is not UTF-8 text ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: {what} is nested too deeply to be a config") from None
    except ValueError as e:  # json.JSONDecodeError, or an integer of more than 4300 digits
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object {{...}}, found a {type(value).__name__}")
    return value


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


def check_state_dict(module, state_dict, source, file_keys=None):
    """Strict check of names and shapes, with messages that list what is missing, extra or misshapen.
    `file_keys` ({module key: key in the file}) names a misshapen tensor as the file does too."""
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
            where = f" (file key '{file_keys[k]}')" if file_keys is not None and k in file_keys else ""
            problems.append(f"wrong shape for '{k}': expected {list(expected[k])}, "
                            f"found {list(state_dict[k].shape)}{where}")
    if problems:
        raise CheckpointError(f"{source}: does not fit {type(module).__name__} -- " + "; ".join(problems[:30]))


def load_into(module, state_dict, source, dtype=None, device=None, file_keys=None):
    """Check strictly (names, shapes, floating dtypes), then assign the tensors into a meta-built module, all in
    one dtype: `dtype` if given, else the one most of the file's tensors have (a stray F16 / F64 tensor in an F32
    file is cast, so the model never holds mixed dtypes). Tensors are converted only where dtype/device differ."""
    check_state_dict(module, state_dict, source, file_keys)
    named = state_dict if file_keys is None else {file_keys.get(k, k): v for k, v in state_dict.items()}
    found = common_dtype(named, source)  # floating tensors only, whatever the target
    target = dtype if dtype is not None else found
    params = {}
    for k, v in state_dict.items():
        cast = target if v.dtype != target else None
        params[k] = v.to(device=device, dtype=cast) if (cast is not None or device is not None) else v
    module.load_state_dict(params, strict=True, assign=True)
    return module


def load_mapped(path, model_class, config, file_keys, prefix, key_map, what, dtype=None, device=None, convert=None):
    """An original-layout file into a fresh `model_class(config)`: built on the meta device, each file key (under
    `prefix`) renamed through `key_map(model's names, config)` -> {original: ours}, keys the map does not know
    refused (naming them and `what` was looked for), then loaded strictly. `convert(tensor, our_name)` reshapes
    where the layouts differ (the video UNet's Conv1d weights)."""
    with torch.device("meta"):
        model = model_class(config)
    mapping = key_map(list(model.state_dict()), config)
    unknown = sorted(k[len(prefix):] for k in file_keys if k[len(prefix):] not in mapping)
    if unknown:
        raise CheckpointError(f"{path}: {len(unknown)} unknown {what}: {', '.join(unknown[:15])}")
    state, origin = {}, {}
    for k, v in load_safetensors(path, keys=set(file_keys)).items():
        ours = mapping[k[len(prefix):]]
        state[ours], origin[ours] = (v if convert is None else convert(v, ours)), k
    return load_into(model, state, path, dtype, device, file_keys=origin).eval()


# float8 is a storage format (PyTorch has no float8 convolutions): such weights compute in float16, which holds
# every float8 value (e4m3 and e5m2) exactly
COMPUTE_DTYPE = {torch.float8_e4m3fn: torch.float16, torch.float8_e5m2: torch.float16}


def common_dtype(state_dict, source):
    """The floating dtype most tensors have (ties: the wider); a non-float tensor is an error naming it."""
    counts = {}
    for k, v in state_dict.items():
        if not v.is_floating_point():
            raise CheckpointError(f"{source}: tensor '{k}' has dtype {str(v.dtype).removeprefix('torch.')}; model "
                                  "weights must be floating point (F32, F16, BF16, F64 or F8)")
        counts[v.dtype] = counts.get(v.dtype, 0) + 1
    if not counts:
        return torch.float32
    best = max(counts, key=lambda d: (counts[d], torch.finfo(d).bits))
    return COMPUTE_DTYPE.get(best, best)


OFFLINE_HINT = ("Download the file elsewhere and pass its local path (a .safetensors file or a diffusers folder) "
                "instead of a repo id.")


def hub_offline():
    """True when HF_HUB_OFFLINE is set or the Hub's host cannot be reached within 3 s (checked once per process),
    so that an offline machine gets its answer at once instead of after ~25 s of HTTP retries."""
    global _OFFLINE
    if _OFFLINE is None:
        import socket
        from urllib.parse import urlparse

        from huggingface_hub import constants
        url = urlparse(constants.ENDPOINT)
        try:
            if constants.HF_HUB_OFFLINE:
                raise OSError("HF_HUB_OFFLINE is set")
            socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
            _OFFLINE = False
        except OSError:
            _OFFLINE = True
    return _OFFLINE


_OFFLINE = None


def hub_download(repo_id, filenames, subfolder=None):
    """Fetch only the named files of a Hub repo into the usual cache; offline, use the cache or say how to pass
    a local file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline, last = hub_offline(), None
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, subfolder=subfolder, local_files_only=offline))
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # offline and not cached: a subclass, not "no such file"
                if offline and name != filenames[-1]:
                    continue  # another name may be cached
                raise CheckpointError(f"{repo_id}: '{name}' is not in the local Hugging Face cache and the Hub "
                                      f"cannot be reached (offline). {OFFLINE_HINT}") from None
            last = e
            continue
        except Exception as e:  # no such repo, gated, ...
            raise CheckpointError(
                f"{repo_id}: could not fetch '{name}' from the Hugging Face Hub ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Without network: {OFFLINE_HINT}") from None
    raise CheckpointError(f"{repo_id}: none of {filenames} found in subfolder {subfolder!r} on the Hub ({last})")


def shard_files(index):
    """The shard file names of a `*.safetensors.index.json`, checked: a weight_map of str -> plain file names."""
    info = read_json(index, "shard index")
    weight_map = info.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: field 'weight_map' must be a non-empty object {{tensor: shard file}}, "
                              f"found {type(weight_map).__name__}")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{index}: field 'weight_map' maps '{key}' to {shard!r}; expected the file name "
                                  "of a .safetensors shard in the same folder")
    return sorted(set(weight_map.values()))


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
        shards = shard_files(index)
        state = {}
        for shard in shards:
            for k, v in load_safetensors(folder / shard).items():
                if k in state:
                    raise CheckpointError(f"{index}: tensor '{k}' is in two shards (one of them {shard})")
                state[k] = v
        mapped = set(read_json(index, "shard index")["weight_map"])
        if mapped != set(state):
            raise CheckpointError(f"{index}: weight_map names {len(mapped)} tensors, the shards hold {len(state)} "
                                  f"(differing: {sorted(mapped ^ set(state))[:10]})")
        return state, index
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    pickles = [n for n in found if Path(n).suffix in PICKLE_SUFFIXES]
    if pickles:
        refuse_pickle(folder / pickles[0])  # raises, with the conversion recipe
    raise CheckpointError(f"{folder}: no {file.name}; found {found}"
                          + ("" if variant else f". Pass variant='fp16' for {stem}.fp16.safetensors."))
