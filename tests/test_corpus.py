"""A corpus of broken and hostile inputs, generated small: every case must end in a named error.

"Named" means minunet's CheckpointError, NonFiniteError or a ValueError / TypeError whose message names the file,
the key or the argument; an unrelated exception from deep inside is a crash, a return is a silent acceptance.
Every class's counts are printed (run with -s to see them next to the other output, or read the test summary).
"""
import json
import pickle
import shutil
import struct
from collections import Counter
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

import pipes
from helpers import TINY, randomize_
from minunet import CheckpointError, UNet, load_unet, load_vae, original_state_dict
from minunet.errors import NonFiniteError
from minunet.cli import main
from minunet.loading.inspect import inspect_file

NAMED = (CheckpointError, NonFiniteError, ValueError, TypeError)
COUNTS = {}


def outcome(fn, fragment):
    """'named' | 'crash: ...' | 'silent' for one try of fn; a named error must mention `fragment`."""
    try:
        fn()
    except NAMED as e:
        return "named" if fragment in str(e) else f"unnamed: {type(e).__name__}: {str(e)[:200]}"
    except Exception as e:  # noqa: BLE001 -- the point: anything else is a crash
        return f"crash: {type(e).__name__}: {str(e)[:200]}"
    return "silent"


def tally(kind, results):
    """Record and check one class: results is [(case, outcome)]."""
    COUNTS[kind] = Counter("named" if o == "named" else o.split(":")[0] for _, o in results)
    print(f"\ncorpus {kind}: {len(results)} tries, " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS[kind].items())))
    bad = [(c, o) for c, o in results if o != "named"]
    assert not bad, f"{len(bad)} of {len(results)} {kind} cases did not end in a named error: {bad[:8]}"


# ---- a small valid single file and folder, then their mutations -----------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    unet_path = root / "unet.safetensors"
    st.save_file({k: v.contiguous() for k, v in original_state_dict(randomize_(UNet(TINY["sd15"]))).items()},
                 unet_path)
    _, whole = pipes.sd_single_file(root)
    return {"root": root, "unet": unet_path, "whole": whole, "folder": root / "pipe"}


def split(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def pack(header, data, n_delta=0, trailing=b""):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) + n_delta) + text + data + trailing


def header_defects(path):
    """{defect: file bytes} from one valid file: each breaks one rule safetensors' own reader enforces."""
    h, data = split(path)
    first, second = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])[:2]

    def edit(key, field, value):
        return {**h, key: {**h[key], field: value}}

    b1, e1 = h[first]["data_offsets"]
    deep = b"[" * 100_000 + b"]" * 100_000
    return {
        "negative offset": pack(edit(first, "data_offsets", [-8, e1]), data),
        "offset into the header": pack(edit(first, "data_offsets", [-len(json.dumps(h)), e1]), data),
        "overlapping offsets": pack(edit(second, "data_offsets", h[first]["data_offsets"]), data),
        "gap between tensors": pack(edit(first, "data_offsets", [b1 + 4, e1]), data),
        "begin after end": pack(edit(first, "data_offsets", [e1, b1]), data),
        "header length one byte short": pack(h, data, n_delta=-1),
        "header length one byte long": pack(h, data, n_delta=1),
        "header length past the file": pack(h, data, n_delta=len(data) + 100),
        "duplicate key": pack(json.dumps(h)[:-1].encode() + b', "' + first.encode() + b'": '
                              + json.dumps(h[first]).encode() + b"}", data),
        "trailing garbage": pack(h, data, trailing=b"garbage!"),
        "data_offsets a string": pack(edit(first, "data_offsets", f"{b1},{e1}"), data),
        "data_offsets of length 3": pack(edit(first, "data_offsets", [b1, e1, e1]), data),
        "data_offsets of length 1": pack(edit(first, "data_offsets", [e1]), data),
        "shape a string": pack(edit(first, "shape", "32,4,3,3"), data),
        "shape of the wrong length": pack(edit(first, "shape", h[first]["shape"] + [2]), data),
        "negative shape": pack(edit(first, "shape", [-1] + h[first]["shape"][1:]), data),
        "float shape": pack(edit(first, "shape", [float(d) for d in h[first]["shape"]]), data),
        "overflowing shape": pack(edit(first, "shape", [2**62, 2**62, 16]), data),
        "dtype a list": pack(edit(first, "dtype", ["F32"]), data),
        "unknown dtype": pack(edit(first, "dtype", "F99"), data),
        "dtype PyTorch cannot hold": pack(edit(first, "dtype", "U16"), data),
        "missing data_offsets": pack({**h, first: {k: v for k, v in h[first].items() if k != "data_offsets"}}, data),
        "entry not an object": pack({**h, first: 3}, data),
        "metadata value not a string": pack({"__metadata__": {"format": 1}, **h}, data),
        "metadata a list": pack({"__metadata__": ["pt"], **h}, data),
        "header a list": pack(json.dumps(list(h)).encode(), data),
        "header not JSON": pack(json.dumps(h).encode()[:-2] + b"!!", data),
        "header not UTF-8": pack(json.dumps(h).encode().replace(b'"', b'"\xff', 1), data),
        "JSON nested 100000 deep": pack(deep, data),
        "entry nested 100000 deep": pack(json.dumps(h)[:-1].encode() + b', "x": ' + deep + b"}", data),
        "5001-digit integer": pack(json.dumps(edit(first, "shape", ["BIG"])).encode().replace(b'"BIG"', b"1" * 5001),
                                   data),
    }


def entry_points(path, name):
    """Every public way a user hands minunet a file: (label, callable, fragment the error must name)."""
    from minunet import Pipeline
    from minunet.loading.text import load_text_conditioner

    frag = Path(path).name
    return [("load_unet", lambda: load_unet(path), frag),
            ("load_vae", lambda: load_vae(path), frag),
            ("text", lambda: load_text_conditioner(path), frag),
            ("from_single_file", lambda: Pipeline.from_single_file(path), frag),
            ("inspect_file", lambda: inspect_file(path, check_hash=False), frag),
            ("cli inspect", lambda: _cli(["inspect", "--no-hash", str(path)]), frag),
            ("cli generate", lambda: _cli(["generate", "x", "--model", str(path), "--steps", "1",
                                           "--out", str(Path(path).with_suffix(".png"))]), frag)]


def _cli(argv):
    """main() -> raise a CheckpointError carrying stderr when it exits non-zero with one line, else return."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    text = err.getvalue().strip()
    if code != 0:
        if "Traceback" in text or len(text.splitlines()) != 1:
            raise RuntimeError(f"exit {code} without a one-line error: {text[:300]}")
        raise CheckpointError(text)


def try_files(files, tmp_path, points=None):
    results = []
    for defect, content in files.items():
        path = tmp_path / f"{defect.replace(' ', '_')}.safetensors"
        path.write_bytes(content)
        for label, fn, frag in (points or entry_points)(path, defect):
            results.append((f"{defect} / {label}", outcome(fn, frag)))
    return results


def test_header_defects(base, tmp_path):
    tally("header", try_files(header_defects(base["whole"]), tmp_path))


def test_truncations_random_bytes_and_empty(base, tmp_path):
    raw = base["whole"].read_bytes()
    files = {f"cut at {k} tenths": raw[:len(raw) * k // 10] for k in range(10)}
    files["cut by one byte"] = raw[:-1]
    files["cut inside the length"] = raw[:5]
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate([1, 8, 64, 4096, 100_000]):
        files[f"random bytes {n}"] = bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())
    files["random body, plausible length"] = struct.pack("<Q", 64) + files["random bytes 4096"]
    files["empty"] = b""
    tally("truncation / random / empty", try_files(files, tmp_path))


# ---- pickles: never unpickled, through every entry point ------------------------------------------------------

class Evil:
    """Unpickling this would create `marker`: proof that code from a checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_never_run(base, tmp_path):
    from minunet import Pipeline
    from minunet.loading.convert import convert

    marker = tmp_path / "MARKER"
    payload = {"state_dict": {"model.diffusion_model.x": torch.zeros(2), "evil": Evil(marker)}}
    files = {}
    for suffix in (".ckpt", ".bin", ".pt", ".pth", ".pkl"):
        files[f"torch.save{suffix}"] = tmp_path / f"evil{suffix}"
        torch.save(payload, files[f"torch.save{suffix}"])
    files["legacy pickle.ckpt"] = tmp_path / "legacy.ckpt"
    files["legacy pickle.ckpt"].write_bytes(pickle.dumps(payload))
    files["pickle named .safetensors"] = tmp_path / "disguised.safetensors"
    files["pickle named .safetensors"].write_bytes(pickle.dumps(payload))
    folder = tmp_path / "folder"
    shutil.copytree(base["folder"], folder)
    for sub, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (folder / sub / f"{stem}.safetensors").unlink()
        torch.save(payload, folder / sub / f"{stem}.bin")
    results = []
    for defect, path in files.items():
        for label, fn, frag in entry_points(path, defect):
            results.append((f"{defect} / {label}", outcome(fn, path.name)))
        out = tmp_path / f"{path.stem}-converted.safetensors"
        results.append((f"{defect} / convert", outcome(lambda: convert(path, out), path.name)))
        results.append((f"{defect} / cli convert", outcome(lambda: _cli(["convert", str(path), str(out)]), path.name)))
        assert not out.exists(), f"convert wrote {out} from a refused pickle"
    for label, fn in [("from_pretrained", lambda: Pipeline.from_pretrained(folder)),
                      ("load_unet folder", lambda: load_unet(folder)), ("load_vae folder", lambda: load_vae(folder))]:
        results.append((f"pickle folder / {label}", outcome(fn, "folder")))
    assert not marker.exists(), "a pickle's code ran"
    tally("pickle", results)


# ---- weights ---------------------------------------------------------------------------------------------------

def _replace(src, dst, key, tensor):
    state = st.load_file(src)
    state[key] = tensor.contiguous()
    st.save_file(state, dst)
    return dst


def test_weight_defects(base, tmp_path):
    from minunet.loading.text import load_text_conditioner

    state = st.load_file(base["whole"])
    unet_key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    vae_key = "first_stage_model.decoder.conv_in.weight"
    emb = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    w = state[unet_key]
    cases = {
        "int8 UNet weight": (unet_key, w.to(torch.int8), load_unet, unet_key),
        "bool UNet weight": (unet_key, w > 0, load_unet, unet_key),
        "int64 VAE weight": (vae_key, state[vae_key].to(torch.int64), load_vae, vae_key.removeprefix(
            "first_stage_model.")),
        "int32 text weight": (emb, state[emb].to(torch.int32), load_text_conditioner, "token_embedding"),
        "UNet weight of the wrong shape": (unet_key, w[:, :-1], load_unet, "input_blocks.1"),
        "token embedding with fewer rows than the vocabulary": (emb, state[emb][:1000], load_text_conditioner,
                                                                 "token embedding has 1000 rows"),
    }
    results = []
    for defect, (key, tensor, loader, frag) in cases.items():
        path = _replace(base["whole"], tmp_path / f"{defect.replace(' ', '_')}.safetensors", key, tensor)
        results.append((defect, outcome(lambda: loader(path), frag)))
    tally("weights", results)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.float8_e4m3fn, torch.bfloat16])
def test_one_stray_float_dtype_is_cast_with_the_rest(base, tmp_path, dtype):
    """One F16 / F64 / F8 tensor in an F32 file: the model holds one dtype (the file's majority) and runs."""
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    state = st.load_file(base["unet"])
    path = _replace(base["unet"], tmp_path / "mixed.safetensors", key, state[key].to(dtype))
    model = load_unet(path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    x = torch.randn(1, 4, 8, 8)
    out = model(x, torch.tensor([10.0]), torch.randn(1, 3, TINY["sd15"].context_dim))
    assert torch.isfinite(out).all()
    assert load_unet(path, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_check_values_lists_nonfinite_tensors(base, tmp_path, capsys):
    state = st.load_file(base["whole"])
    keys = ["model.diffusion_model.out.2.bias", "first_stage_model.decoder.conv_out.bias"]
    state[keys[0]] = state[keys[0]].clone()
    state[keys[0]][0] = float("nan")
    state[keys[1]] = state[keys[1]].clone()
    state[keys[1]][1:] = float("inf")
    path = tmp_path / "nan.safetensors"
    st.save_file(state, path)
    assert main(["inspect", "--no-hash", "--check-values", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 tensors with NaN or Inf" in out
    assert f"{keys[0]}: 1 NaN, 0 Inf" in out and f"{keys[1]}: 0 NaN, 2 Inf" in out
    assert main(["inspect", "--no-hash", "--check-values", str(base["whole"])]) == 0
    assert "0 tensors with NaN or Inf (all finite)" in capsys.readouterr().out


# ---- configs of a diffusers folder -----------------------------------------------------------------------------

CONFIG_DEFECTS = {  # (file in the folder, new content (bytes, or a function of the old dict), fragment named)
    "unet config not JSON": ("unet/config.json", b'{"in_channels": 4,', "unet/config.json"),
    "unet config a list": ("unet/config.json", b"[1, 2]", "unet/config.json"),
    "unet config not UTF-8": ("unet/config.json", b'{"_class_name": "\xff\xfe"}', "unet/config.json"),
    "block_out_channels an int": ("unet/config.json", lambda c: {**c, "block_out_channels": 32}, "block_out_channels"),
    "attention_head_dim 0": ("unet/config.json", lambda c: {**c, "attention_head_dim": 0}, "num_heads"),
    "negative width": ("unet/config.json", lambda c: {**c, "block_out_channels": [-32, 64]}, "block_out_channels"),
    "groups not dividing": ("unet/config.json", lambda c: {**c, "norm_num_groups": 7}, "norm groups"),
    "layers_per_block 0": ("unet/config.json", lambda c: {**c, "layers_per_block": 0}, "layers_per_block"),
    "context width a string": ("unet/config.json", lambda c: {**c, "cross_attention_dim": "32"}, "context_dim"),
    "vae config not JSON": ("vae/config.json", b"{", "vae/config.json"),
    "NaN scaling_factor": ("vae/config.json", lambda c: {**c, "scaling_factor": float("nan")}, "scaling_factor"),
    "zero scaling_factor": ("vae/config.json", lambda c: {**c, "scaling_factor": 0}, "scaling_factor"),
    "negative VAE width": ("vae/config.json", lambda c: {**c, "block_out_channels": [-32, 32]}, "block_out_channels"),
    "latent_channels 0": ("vae/config.json", lambda c: {**c, "latent_channels": 0}, "latent_channels"),
    "text config not JSON": ("text_encoder/config.json", b"nope", "text_encoder/config.json"),
    "text hidden_size 0": ("text_encoder/config.json", lambda c: {**c, "hidden_size": 0}, "hidden_size"),
    "text heads not dividing": ("text_encoder/config.json", lambda c: {**c, "num_attention_heads": 5},
                                "num_attention_heads"),
    "model_index not JSON": ("model_index.json", b"{]", "model_index.json"),
    "model_index a list": ("model_index.json", b"[]", "model_index.json"),
    "scheduler not JSON": ("scheduler/scheduler_config.json", b"{,}", "scheduler_config.json"),
    "negative beta_start": ("scheduler/scheduler_config.json", lambda c: {**c, "beta_start": -0.1}, "beta_start"),
    "NaN beta_end": ("scheduler/scheduler_config.json", lambda c: {**c, "beta_end": float("nan")}, "beta_end"),
    "beta_end above 1": ("scheduler/scheduler_config.json", lambda c: {**c, "beta_end": 2.0}, "beta_end"),
    "timesteps a string": ("scheduler/scheduler_config.json", lambda c: {**c, "num_train_timesteps": "1000"},
                           "num_train_timesteps"),
    "tokenizer vocab not JSON": ("tokenizer/vocab.json", b'{"a": ', "vocab.json"),
    "tokenizer config a list": ("tokenizer/tokenizer_config.json", b"[]", "tokenizer_config.json"),
}


def _break(folder, rel, content):
    path = folder / rel
    if callable(content):
        content = json.dumps(content(json.loads(path.read_text()))).encode()
    path.write_bytes(content)


def _shard(folder, weight_map):
    """unet/ with an index instead of its one file."""
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "shard-1.safetensors")
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps(weight_map))


def test_config_defects(base, tmp_path):
    from minunet import Pipeline

    results = []
    for i, (defect, (rel, content, frag)) in enumerate(CONFIG_DEFECTS.items()):
        folder = tmp_path / f"case{i}"
        shutil.copytree(base["folder"], folder)
        _break(folder, rel, content)
        results.append((defect, outcome(lambda: Pipeline.from_pretrained(folder), frag)))
        shutil.rmtree(folder)
    keys = list(st.load_file(base["folder"] / "unet" / "diffusion_pytorch_model.safetensors"))
    shards = {"shard index without weight_map": {"metadata": {}},
              "weight_map a list": {"weight_map": ["shard-1.safetensors"]},
              "shard outside the folder": {"weight_map": {k: "../shard-1.safetensors" for k in keys}},
              "missing shard": {"weight_map": {k: "shard-2.safetensors" for k in keys}},
              "weight_map missing a key": {"weight_map": {k: "shard-1.safetensors" for k in keys[1:]}}}
    for i, (defect, index) in enumerate(shards.items()):
        folder = tmp_path / f"shard{i}"
        shutil.copytree(base["folder"], folder)
        _shard(folder, index)
        results.append((defect, outcome(lambda: Pipeline.from_pretrained(folder), "unet")))
        shutil.rmtree(folder)
    tally("config", results)


def test_a_good_shard_index_loads(base, tmp_path):
    folder = tmp_path / "good"
    shutil.copytree(base["folder"] / "unet", folder)
    keys = list(st.load_file(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "shard-1.safetensors")
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "shard-1.safetensors" for k in keys}}))
    ref = load_unet(base["folder"] / "unet")
    assert all(torch.equal(a, b) for a, b in zip(load_unet(folder).state_dict().values(), ref.state_dict().values()))


# ---- pipeline arguments and non-finite outputs -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from minunet import Pipeline

    return Pipeline.tiny()


def argument_defects(tmp_path):
    """{defect: (keyword arguments, the argument the error must name)} for Pipeline.tiny() (128 px, 2 levels)."""
    nan, inf = float("nan"), float("inf")
    return {
        "float height": ({"height": 64.0}, "height"), "string width": ({"width": "64"}, "width"),
        "height 0": ({"height": 0}, "height"), "height 8 (too small for the levels)": ({"height": 8}, "height"),
        "height not a multiple of 8": ({"height": 60}, "height"), "empty prompt list": ({"prompt": []}, "prompt"),
        "prompt an int": ({"prompt": 3}, "prompt"), "prompt list with an int": ({"prompt": ["a", 1]}, "prompt"),
        "negative prompt an int": ({"negative_prompt": 5}, "negative_prompt"),
        "generator an int": ({"generator": 3}, "generator"), "generator a string": ({"generator": "cuda"}, "generator"),
        "generator list with a non-generator": ({"generator": [torch.Generator(), 3]}, "generator[1]"),
        "generator list of the wrong length": ({"generator": [torch.Generator()] * 3}, "generators"),
        "latents of the wrong rank": ({"latents": torch.zeros(4, 16, 16)}, "latents"),
        "latents with the wrong channels": ({"latents": torch.zeros(1, 3, 16, 16)}, "latents"),
        "latents with the wrong batch": ({"latents": torch.zeros(2, 4, 16, 16)}, "latents"),
        "latents contradicting height": ({"latents": torch.zeros(1, 4, 16, 16), "height": 64}, "latents"),
        "NaN latents": ({"latents": torch.full((1, 4, 16, 16), nan)}, "latents"),
        "integer latents": ({"latents": torch.zeros(1, 4, 16, 16, dtype=torch.int64)}, "latents"),
        "1-channel image": ({"image": torch.rand(1, 1, 64, 64)}, "image"),
        "image outside [0, 1]": ({"image": torch.rand(1, 3, 64, 64) + 1}, "image"),
        "image a missing path": ({"image": str(tmp_path / "cat.png")}, "cat.png"),
        "image a number": ({"image": 7}, "image"), "callback an int": ({"callback": 5}, "callback"),
        "strength without an image": ({"strength": 0.5}, "strength"),
        "strength 0 with an image": ({"strength": 0.0, "image": torch.rand(1, 3, 64, 64)}, "strength"),
        "guidance NaN": ({"guidance_scale": nan}, "guidance_scale"),
        "guidance inf": ({"guidance_scale": inf}, "guidance_scale"),
        "guidance -inf": ({"guidance_scale": -inf}, "guidance_scale"),
        "guidance a string": ({"guidance_scale": "7"}, "guidance_scale"),
        "guidance_rescale NaN": ({"guidance_rescale": nan}, "guidance_rescale"),
        "guidance_rescale negative": ({"guidance_rescale": -0.5}, "guidance_rescale"),
        "eta NaN": ({"eta": nan, "sampler": "ddim"}, "eta"), "eta negative": ({"eta": -1.0, "sampler": "ddim"}, "eta"),
        "steps 0": ({"num_inference_steps": 0}, "num_inference_steps"),
        "steps a float": ({"num_inference_steps": 2.5}, "num_inference_steps"),
        "images per prompt 0": ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        "unknown sampler": ({"sampler": "heun"}, "sampler"),
        "unknown output type": ({"output_type": "jpeg"}, "output_type"),
        "denoising_start without an image": ({"denoising_start": 0.5}, "denoising_start"),
        "denoising_end NaN": ({"denoising_end": nan}, "denoising_end"),
        "clip_skip too large": ({"clip_skip": 5}, "clip_skip"),
    }


def test_pipeline_argument_defects(tiny, tmp_path):
    results = []
    for defect, (kw, frag) in argument_defects(tmp_path).items():
        kw = {"prompt": "x", "num_inference_steps": 1, "progress": False, **kw}
        results.append((defect, outcome(lambda: tiny(**kw), frag)))
    tally("pipeline arguments", results)


def test_an_image_path_is_opened(tiny, tmp_path):
    from PIL import Image

    path = tmp_path / "cat.png"
    Image.new("RGB", (64, 48), "red").save(path)
    out = tiny("x", image=str(path), num_inference_steps=2, strength=0.5, progress=False).images[0]
    assert out.size == (64, 48)


@pytest.mark.parametrize("component, module, dtype, advice", [
    ("UNet", "unet", None, "inspect --check-values"), ("VAE", "vae", None, "inspect --check-values"),
    ("text encoder", "text", None, "inspect --check-values"), ("UNet", "unet", torch.bfloat16, "dtype=torch.float32")])
def test_one_nan_weight_is_a_named_error_at_the_first_step(component, module, dtype, advice):
    from minunet import Pipeline

    pipe = Pipeline.tiny()
    if dtype is not None:
        for m in (pipe.unet, pipe.vae, pipe.text):
            m.to(dtype)
    used = {"vae": "decoder.", "text": "layers.0."}.get(module, "")  # a weight every generation uses
    weight = next(p for n, p in getattr(pipe, module).named_parameters()
                  if used in n and n.endswith("weight") and p.ndim > 1)
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    steps = []
    with pytest.raises(NonFiniteError, match=rf"the {component} produced .*NaN.*{advice}"):
        pipe("x", num_inference_steps=3, callback=lambda i, t, x: steps.append(i), progress=False)
    assert steps == ([] if module != "vae" else [0, 1, 2])  # UNet / text: stopped before step 0 finished


def test_cli_nan_model_exits_1_and_writes_nothing(base, tmp_path, capsys):
    state = st.load_file(base["whole"])
    key = "model.diffusion_model.out.2.bias"
    state[key] = torch.full_like(state[key], float("nan"))
    path, out = tmp_path / "nan.safetensors", tmp_path / "out.png"
    st.save_file(state, path)
    assert main(["generate", "x", "--model", str(path), "--steps", "2", "--size", "64x64", "--out", str(out)]) == 1
    assert "the UNet produced" in capsys.readouterr().err and not out.exists()
