"""What a new user hits with the command line and the README: every argument, output path and writer checked before
any model loads, one line naming the argument (exit 2 usage, 1 model / file / machine), never a traceback;
`--help` with defaults, `--version`, tiny defaults for tiny models, and the README's samplers snippet runs."""
import importlib.metadata
import re
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

import minunet
from minunet.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


def run(argv, capsys):
    """(exit status, stderr) of one command (argparse's own errors exit 2 too); a traceback is never part of it.
    Its stdout is kept in run.out."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    run.out = out
    return code, err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if any pipeline is built: the error must come before."""
    from minunet.pipelines.image import Pipeline
    from minunet.pipelines.video import VideoPipeline

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the argument error")
    for cls in (Pipeline, VideoPipeline):
        monkeypatch.setattr(cls, "tiny", classmethod(boom))
        if hasattr(cls, "tiny_random"):
            monkeypatch.setattr(cls, "tiny_random", classmethod(boom))
        monkeypatch.setattr(cls, "from_pretrained", classmethod(boom))


VIDEO = ["video", "a panda", "--model", "tiny-video", "--frames", "2", "--steps", "1", "--size", "32x32"]


@pytest.mark.parametrize("extra, message", [
    (["--cfg", "nan", "--out", "v.gif"], "--cfg nan: must be a finite number"),
    (["--out", "x.png"], "--out x.png: unsupported video file type '.png'"),
    (["--out", "/proc/minunet-nope/v.gif"], "--out /proc/minunet-nope/v.gif: cannot write in /proc"),
    (["--steps", "0", "--out", "v.gif"], "--steps 0: must be at least 1"),
])
def test_video_arguments_and_output_checked_before_any_model(extra, message, capsys, no_model_load, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(VIDEO + extra, capsys)
    assert code == 2 and message in err, err


def test_video_mp4_without_pyav_is_said_first(capsys, no_model_load, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    code, err = run(VIDEO + ["--out", str(tmp_path / "v.mp4")], capsys)
    assert code == 2 and "needs PyAV: pip install 'minunet[video]'" in err


@NO_CUDA
def test_device_cuda_without_cuda_is_one_line(capsys, tmp_path, sd):
    folder, _ = sd
    code, err = run(["video", "x", "--model", str(folder), "--device", "cuda", "--out", str(tmp_path / "v.gif")], capsys)
    assert code == 1 and "--device cuda: CUDA is not available" in err
    with pytest.raises(RuntimeError, match=r"load_unet: device='cuda': CUDA is not available"):
        minunet.load_unet(folder / "unet", device="cuda")


def test_video_tiny_takes_dtype(capsys, tmp_path, monkeypatch):
    from minunet.pipelines.video import VideoPipeline

    seen = []
    real = VideoPipeline.__call__

    def spy(self, *a, **k):
        seen.append((self.unet.dtype, self.vae.dtype, k["num_inference_steps"]))
        return real(self, *a, **k)
    monkeypatch.setattr(VideoPipeline, "__call__", spy)
    assert main(["video", "x", "--model", "tiny-video-random", "--frames", "2", "--size", "32x32", "--dtype", "bfloat16",
                 "--out", str(tmp_path / "v.gif")]) == 0
    assert seen == [(torch.bfloat16, torch.bfloat16, 10)]  # and the tiny model's own step default


def test_generate_out_unwritable_before_sampling(capsys, no_model_load):
    code, err = run(["generate", "x", "--out", "/proc/minunet-nope/y.png"], capsys)
    assert code == 2 and "--out /proc/minunet-nope/y.png: cannot write in /proc" in err


@pytest.mark.parametrize("which", ["base", "refiner"])
def test_parity_on_sdxl_structure_folders(sdxl, which, capsys):
    folder = sdxl[0] if which == "base" else sdxl[1]
    code, err = run(["parity", str(folder / "unet"), "--size", "64x48"], capsys)
    out = run.out
    assert code == 0, err
    worst = float(re.search(r"largest difference relative to the block's output scale: (\S+)", out + err).group(1))
    assert worst < 1e-4


def test_model_and_lora_file_mistakes(capsys, tmp_path, no_model_load):
    torch.save({"a": torch.ones(1)}, tmp_path / "x.pth")
    code, err = run(["generate", "x", "--model", str(tmp_path / "missing.pth")], capsys)
    assert code == 2 and "missing.pth: no such file" in err
    code, err = run(["generate", "x", "--lora", "f.safetensors:abc"], capsys)
    assert code == 2 and "f.safetensors:abc: the SCALE after ':' must be a number, got 'abc'" in err
    code, err = run(["generate", "x", "--lora", str(tmp_path / "missing.safetensors")], capsys)
    assert code == 2 and "--lora" in err and "missing.safetensors: no such file" in err
    code, err = run(["generate", "x", "--sampler", "ddim", "--karras"], capsys)
    assert code == 2 and "--karras with --sampler ddim" in err


def test_pth_model_points_to_convert(capsys, tmp_path):
    torch.save({"a": torch.ones(1)}, tmp_path / "x.pth")
    code, err = run(["generate", "x", "--model", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o.png")], capsys)
    assert code == 1 and "minunet convert" in err and "not a file" not in err


def test_inspect_folder_and_diffusers_unet_file(sd, capsys):
    folder, _ = sd
    code, err = run(["inspect", str(folder)], capsys)
    assert code == 2 and "is a folder; inspect takes one .safetensors file" in err
    code, err = run(["inspect", str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "--no-hash"], capsys)
    out = run.out
    assert code == 0 and "diffusers layout" in out and "other" not in out
    n = len(st.load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert f"key coverage: {n}/{n} model tensors mapped" in out


def test_offline_messages_are_one_form(capsys, tmp_path, monkeypatch):
    """generate (an official name), --upscale x2, video (a repo), download: the same words, no exception class
    names; download names what it was asked for."""
    import huggingface_hub.constants

    import minunet.loading.io as io
    monkeypatch.setattr(io, "_OFFLINE", None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    out = str(tmp_path / "o.png")
    errors = []
    for argv in (["generate", "x", "--model", "sd15", "--out", out],
                 ["generate", "x", "--model", "tiny", "--steps", "1", "--upscale", "x2", "--out", out],
                 ["video", "x", "--model", "ms-1.7b", "--out", str(tmp_path / "v.gif")], ["download", "sdxl"]):
        code, err = run(argv, capsys)
        assert code == 1, err
        errors.append(err)
        assert "could not fetch" in err and "the Hub cannot be reached (offline)" in err, err
        assert "Without network: download it elsewhere and pass its local path" in err
        assert not re.search(r"[A-Z]\w*(Error|Exception)\b", err), err
    assert errors[3].startswith("minunet: error: download sdxl (sd_xl_base_1.0.safetensors of ")


def test_sdxl_model_with_upscale_is_refused(sdxl, capsys, tmp_path):
    code, err = run(["generate", "x", "--model", str(sdxl[0]), "--upscale", "tiny-random", "--out", str(tmp_path / "o.png")],
                    capsys)
    assert code == 2 and "the x2 latent upscaler takes SD 1.x / 2.x latents" in err and "sdxl model" in err


def test_huge_size_is_refused_up_front(capsys, tmp_path):
    code, err = run(["generate", "x", "--size", "100000x100000", "--out", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "height=100000, width=100000 (batch 1)" in err and "GiB" in err


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for fragment in ("(default: euler)", "(default: tiny)", "(default: 30; tiny-random models: 10)", "(default: 0)",
                     "(default: minunet.png)", "(default: 75, diffusers'; with --upscale tiny: 3)"):
        assert fragment in " ".join(text.split()), fragment
    with pytest.raises(SystemExit):
        main(["video", "--help"])
    assert "(default: tiny-video)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"minunet {minunet.__version__}"
    assert minunet.__version__ == importlib.metadata.version("minunet")


def test_tiny_upscaler_gets_tiny_defaults(capsys, tmp_path, monkeypatch):
    from minunet.pipelines.upscale import UpscalePipeline

    seen = []
    real = UpscalePipeline.__call__

    def spy(self, *a, **k):
        seen.append(k["num_inference_steps"])
        return real(self, *a, **k)
    monkeypatch.setattr(UpscalePipeline, "__call__", spy)
    assert main(["generate", "x", "--model", "tiny", "--size", "64x64", "--upscale", "tiny",
                 "--out", str(tmp_path / "o.png")]) == 0
    assert seen == [3]


def test_readme_samplers_snippet_runs():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Samplers"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    scope = {}
    exec(compile(code, "README.md (Samplers)", "exec"), scope)
    assert scope["x"].shape == (1, 4, 16, 16) and torch.isfinite(scope["x"]).all()
    assert len(scope["steps"].timesteps) == 10
