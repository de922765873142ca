"""NaN / Inf never reaches a file: a damaged weight is named at the first step (the weight itself), latents that
overflow later name the argument that made them (guidance_scale), in every pipeline, before anything is written."""
import pytest
import safetensors.torch as st
import torch

import pipes
from minunet import NonFiniteError, Pipeline
from minunet.cli import main


def test_cli_nan_in_the_middle_block_names_the_weight_and_writes_nothing(tmp_path, capsys):
    """The issue's case: one NaN weight in the UNet's middle block, `generate` at 64 x 64 with 2 steps."""
    _, path = pipes.sd_single_file(tmp_path)
    state = st.load_file(path)
    state["model.diffusion_model.middle_block.0.in_layers.2.weight"].view(-1)[7] = float("nan")
    st.save_file(state, tmp_path / "nan.safetensors")
    out = tmp_path / "out.png"
    capsys.readouterr()
    assert main(["generate", "x", "--model", str(tmp_path / "nan.safetensors"), "--size", "64x64", "--steps", "2",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the UNet produced" in err and "Its weight mid_block.resnets.0.conv1.weight holds NaN" in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m"])
def test_huge_guidance_scale_is_named_not_the_weights(steps, sampler):
    """guidance_scale=1e30 overflows the latents (after the last step with 1 step: the VAE's input): the error names
    guidance_scale and does not blame the weights."""
    pipe = Pipeline.tiny_random()
    with pytest.raises(NonFiniteError, match=r"guidance_scale=1e\+30 multiplies .* usual values are 1-20") as e:
        pipe("x", height=64, width=64, num_inference_steps=steps, guidance_scale=1e30, sampler=sampler,
             generator=torch.Generator().manual_seed(0), progress=False)
    assert "weights may hold" not in str(e.value) and "The weights are finite" in str(e.value)


def test_cli_huge_cfg_exits_1_naming_it(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "x", "--model", "tiny-random", "--steps", "2", "--size", "64x64", "--cfg", "1e30",
                 "--out", str(out)]) == 1
    assert "guidance_scale=1e+30" in capsys.readouterr().err and not out.exists()


def test_upscaler_and_video_name_a_damaged_weight():
    from minunet import UpscalePipeline, VideoPipeline

    up = UpscalePipeline.tiny_random()
    up.unet.up_blocks[0].resnets[0].conv1.weight.data.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"upscaler UNet produced .* Its weight up_blocks.0.resnets.0.conv1.weight"):
        up("x", image=torch.randn(1, 4, 8, 8), num_inference_steps=2, progress=False)
    video = VideoPipeline.tiny_random()
    video.vae.decoder.conv_out.weight.data.view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"the VAE produced .* Its weight decoder.conv_out.weight"):
        video("x", num_frames=2, num_inference_steps=2, height=32, width=32, progress=False)
