"""The generation parameters a PNG carries, and the way back (`generate --from-png`).

- `parameters` text chunk: A1111's infotext, exactly as A1111 writes it, which A1111's "PNG Info", its extensions,
  ComfyUI / InvokeAI importers and metadata readers parse:

      a red fox in the snow <lora:style:0.8>
      Negative prompt: blurry
      Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "style: 0123456789ab", Version: minunet 0.1.0

  sampler names as A1111's (Euler, Euler a, DDIM, DPM++ 2M); "Clip skip" is A1111's (minunet's clip_skip + 1);
  "Model hash" the first 10 hex digits of the file's SHA-256, LoRA hashes the first 12 of the SHA-256 of its
  tensor data (A1111's "addnet" hash); FreeU as Forge's built-in FreeU writes it (freeu_enabled, freeu_b1, ...);
  the refiner and the x2 upscaler as A1111's Refiner / Hires fields.
- `minunet` text chunk: the exact settings as JSON (`generate`'s option names, this image's own seed, the CFG and
  strength actually used, FreeU's version and mapping, LoRA paths), what `--from-png` reads first.
"""
import json
import re
from pathlib import Path

from .common import OFFICIAL, UsageError

JSON_CHUNK = "minunet"
A1111_SAMPLERS = {"euler": "Euler", "euler_a": "Euler a", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M"}
# generate's options that make an image: what the JSON chunk holds and --from-png restores
SETTINGS = ("prompt", "negative", "model", "sampler", "karras", "steps", "cfg", "seed", "clip_skip", "size", "freeu",
            "freeu_mapping", "freeu_version", "compare_freeu", "lora", "upscale", "upscale_steps", "upscale_cfg",
            "upscale_revision", "image", "mask", "strength", "padding_mask_crop", "refiner", "high_noise_frac",
            "num_images", "negative_original_size", "negative_target_size", "negative_crops", "dtype",
            "deepcache", "deepcache_branch", "tome")
# A1111's infotext parameters: `Key: value` or `Key: "quoted, value"`, comma-separated (its re_param)
PARAM = re.compile(r'\s*(\w[\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
LORA_TAG = re.compile(r"<lora:([^:>]+):([-+0-9.eE]+)>")


# ---- writing ---------------------------------------------------------------------------------------------------

def settings(args, *, seed, cfg, strength, size, freeu):
    """The JSON chunk's settings of one image: the command line's options with this image's seed, the CFG and
    strength actually used (the model's defaults resolved), its size, and FreeU as given to the pipeline."""
    out = {k: getattr(args, k, None) for k in SETTINGS}
    out.update(seed=seed, cfg=cfg, strength=None if args.image is None else strength, size=f"{size[0]}x{size[1]}", num_images=1,
               lora=[f"{path}:{scale:g}" for path, scale in args.lora], compare_freeu=False,
               freeu=None if freeu is None else f"{freeu.b1:g},{freeu.b2:g},{freeu.s1:g},{freeu.s2:g}",
               freeu_mapping=None if freeu is None else freeu.mapping,
               freeu_version=None if freeu is None else freeu.version)
    return out


def a1111_text(s, model_hash=None, lora_hashes=()):
    """A1111's infotext of one image's settings `s` (see settings)."""
    from .. import __version__

    loras = [_lora_arg(text) for text in s["lora"]]
    prompt = s["prompt"] + "".join(f" <lora:{path.stem}:{scale:g}>" for path, scale in loras)
    lines = [prompt] + ([f"Negative prompt: {s['negative']}"] if s["negative"] not in (None, "") else [])
    fields = {"Steps": s["steps"], "Sampler": A1111_SAMPLERS[s["sampler"]],
              "Schedule type": "Karras" if s["karras"] else None, "CFG scale": f"{s['cfg']:g}", "Seed": s["seed"],
              "Size": s["size"], "Model hash": model_hash, "Model": model_name(s["model"]),
              "Denoising strength": None if s["image"] is None else f"{s['strength']:g}",
              "Clip skip": None if s["clip_skip"] is None else s["clip_skip"] + 1, **_freeu_fields(s),
              **_refiner_fields(s), **_hires_fields(s),
              "Lora hashes": _quote(", ".join(f"{p.stem}: {h}" for (p, _), h in zip(loras, lora_hashes))) if
              len(lora_hashes) > 0 else None, "Version": f"minunet {__version__}"}
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _freeu_fields(s):
    if s["freeu"] is None:
        return {}
    b1, b2, s1, s2 = s["freeu"].split(",")
    return {"freeu_enabled": "True", "freeu_b1": b1, "freeu_b2": b2, "freeu_s1": s1, "freeu_s2": s2}


def _refiner_fields(s):
    if s["refiner"] is None:
        return {}
    return {"Refiner": model_name(s["refiner"]), "Refiner switch at": f"{s['high_noise_frac']:g}"}


def _hires_fields(s):
    if s["upscale"] is None:
        return {}
    return {"Hires upscale": 2, "Hires steps": s["upscale_steps"], "Hires upscaler": model_name(s["upscale"])}


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_name(model):
    """What A1111's `Model:` says: a checkpoint's file name without its extension (a folder's or repo's last part)."""
    if model in OFFICIAL:
        return Path(OFFICIAL[model][1]).stem
    return Path(str(model).rstrip("/")).stem if Path(model).suffix == ".safetensors" else Path(str(model)).name


def model_hash(model):
    """A1111's model hash (first 10 hex digits of the SHA-256) of a checkpoint file or an official name, else None."""
    if model in OFFICIAL and OFFICIAL[model][2] is not None:
        from ..loading.official import official_files

        return {p: s for entries in official_files().values() for p, s in entries}[OFFICIAL[model][2]][:10]
    if Path(model).is_file():
        from ..loading.official import sha256

        return sha256(model, progress=False)[:10]
    return None


def lora_hash(path):
    """A1111's LoRA hash: the first 12 hex digits of the SHA-256 of a .safetensors file's tensor data (its
    "addnet" hash: everything after the 8-byte length and the JSON header)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()[:12]


def png_info(s, text):
    """The PNG's text chunks: `parameters` (A1111's text) and `minunet` (the exact settings as JSON)."""
    from PIL.PngImagePlugin import PngInfo

    from .. import __version__

    info = PngInfo()
    info.add_text("parameters", text)
    info.add_text(JSON_CHUNK, json.dumps({"generator": f"minunet {__version__}", "settings": s}))
    return info


def _lora_arg(text):
    head, _, tail = text.rpartition(":")
    return Path(head), float(tail)


# ---- reading (--from-png) -------------------------------------------------------------------------------------

def read_png(path):
    """{generate option: value} from a PNG: its `minunet` JSON chunk, else its A1111 `parameters` text."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise UsageError(f"--from-png {path}: no such file")
    try:
        with Image.open(path) as im:
            chunks = dict(getattr(im, "text", None) or im.info)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"--from-png {path}: not an image PIL can read ({e})") from None
    if JSON_CHUNK in chunks:
        try:
            found = json.loads(chunks[JSON_CHUNK])["settings"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"--from-png {path}: its '{JSON_CHUNK}' chunk is not minunet's settings JSON") from None
        return {k: v for k, v in found.items() if k in SETTINGS}
    if "parameters" in chunks:
        return from_a1111(chunks["parameters"], path)
    raise UsageError(f"--from-png {path}: no generation parameters in it (no 'parameters' or '{JSON_CHUNK}' text)")


def split_a1111(text):
    """A1111's infotext -> (prompt, negative prompt, {key: value}), as A1111's own reader splits it."""
    lines = text.strip().split("\n")
    fields = {}
    if len(PARAM.findall(lines[-1])) >= 3:
        fields = {k.strip(): _unquote(v.strip()) for k, v in PARAM.findall(lines.pop())}
    prompt, negative, target = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            target, line = negative, line[len("Negative prompt:"):].strip()
        (prompt if target is None else negative).append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip(), fields


def _unquote(value):
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def from_a1111(text, path):
    """{generate option: value} from A1111's infotext. <lora:NAME:SCALE> tags leave the prompt (listed under
    "a1111_loras"); the checkpoint's name under "a1111_model" (see resolve_a1111)."""
    prompt, negative, f = split_a1111(text)
    out = {"prompt": LORA_TAG.sub("", prompt).strip(), "negative": negative or None,
           "a1111_loras": [(name, float(scale)) for name, scale in LORA_TAG.findall(prompt)],
           "a1111_model": f.get("Model")}
    try:
        out.update(_a1111_fields(f))
    except ValueError as e:
        raise UsageError(f"--from-png {path}: {e}") from None
    return out


def _a1111_fields(f):
    out = {}
    for key, dest, kind in (("Steps", "steps", int), ("CFG scale", "cfg", float), ("Seed", "seed", int),
                            ("Denoising strength", "strength", float), ("Refiner switch at", "high_noise_frac", float)):
        if key in f:
            out[dest] = kind(f[key])
    if "Size" in f:
        out["size"] = f["Size"]
    if "Clip skip" in f and int(f["Clip skip"]) > 1:
        out["clip_skip"] = int(f["Clip skip"]) - 1
    if "Sampler" in f:
        out.update(_a1111_sampler(f["Sampler"], f.get("Schedule type")))
    if f.get("freeu_enabled") == "True":
        out["freeu"] = ",".join(f[f"freeu_{k}"] for k in ("b1", "b2", "s1", "s2"))
    return out


def _a1111_sampler(name, schedule):
    """'Euler a' / 'DPM++ 2M' (+ Schedule type Karras), or the older 'DPM++ 2M Karras' -> sampler, karras."""
    karras = schedule == "Karras" or name.endswith(" Karras")
    base = name.removesuffix(" Karras")
    ours = {v: k for k, v in A1111_SAMPLERS.items()}.get(base)
    if ours is None:
        raise ValueError(f"sampler '{name}' has no minunet equivalent (minunet has {', '.join(A1111_SAMPLERS.values())})")
    return {"sampler": ours, "karras": karras}


def resolve_a1111(found, given, path):
    """An A1111 PNG names its checkpoint and LoRAs, not their files: the official ones are known by name; any
    other must be given (--model, --lora) rather than replaced silently."""
    model, loras = found.pop("a1111_model", None), found.pop("a1111_loras", [])
    if "model" not in given and model is not None:
        official = {Path(f).stem: name for name, (_, f, _) in OFFICIAL.items()}
        if model not in official:
            raise UsageError(f"--from-png {path}: made with the checkpoint '{model}', which minunet cannot locate: "
                             "give --model FILE (or a name, folder or repo id)")
        found["model"] = official[model]
    if loras and "lora" not in given:
        tags = " ".join(f"<lora:{n}:{s:g}>" for n, s in loras)
        raise UsageError(f"--from-png {path}: made with the LoRAs {tags}, which minunet cannot locate: give "
                         "--lora FILE[:SCALE] for each")
    return found
