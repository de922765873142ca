"""Tiny random pipelines in the diffusers layout (real CLIP tokenizer, small text encoders, UNet and VAE)."""
import shutil

import torch

from helpers import assert_close, randomize_
from minunet import UNetConfig
from minunet.weights import CONFIGS, TOKENIZER
from minunet.loading.configs import to_diffusers

SD_SCHEDULER = CONFIGS / "stable-diffusion-v1-5" / "scheduler" / "scheduler_config.json"
XL_SCHEDULER = CONFIGS / "stable-diffusion-xl-base-1.0" / "scheduler" / "scheduler_config.json"


def tokenizer(folder, repo="stable-diffusion-v1-5", sub="tokenizer"):
    """The shipped CLIP BPE files + the official tokenizer configs of `repo/sub`, saved in `folder`."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for f in (CONFIGS / repo / sub).iterdir():
        shutil.copy(f, folder / f.name)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER / f, folder / f)
    return CLIPTokenizer.from_pretrained(folder)


def text_encoder(hidden, layers, projection=None, seed=0, act="quick_gelu", heads=2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                         projection_dim=projection or hidden, pad_token_id=1, bos_token_id=49406, eos_token_id=49407)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    return randomize_(model, seed)


def diffusers_vae(seed=0, scaling=0.18215, upcast=False, groups=8):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=groups, sample_size=32,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        scaling_factor=scaling, force_upcast=upcast).eval()
    return randomize_(vae, seed)


def unet(cfg, seed=0):
    from diffusers import UNet2DConditionModel

    return randomize_(UNet2DConditionModel(**to_diffusers(cfg), sample_size=8).eval(), seed)


def sd_pipeline(folder, seed=0):
    """A StableDiffusionPipeline with tiny random parts, saved to `folder` and returned."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    cfg = UNetConfig(block_out_channels=(32, 64), attention_levels=(True, True), transformer_depth=(1, 1),
                     num_heads=(2, 2), context_dim=32, norm_num_groups=8)
    pipe = StableDiffusionPipeline(
        vae=diffusers_vae(seed), text_encoder=text_encoder(32, 2, seed=seed + 1), tokenizer=tokenizer(folder / "tok"),
        unet=unet(cfg, seed + 2), scheduler=EulerDiscreteScheduler.from_pretrained(SD_SCHEDULER.parent),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return pipe


def full_sd15_pipeline(folder, device="cpu", dtype=torch.float32):
    """A StableDiffusionPipeline of SD 1.5's official configs, random weights (the modules' default init, seed 0,
    built on `device`), saved to `folder` in `dtype` (the benchmarks' full-size input)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd15 = CONFIGS / "stable-diffusion-v1-5"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd15 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd15 / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(sd15 / "text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer(folder / "tok"), unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(sd15 / "scheduler"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype).save_pretrained(folder)


def sdxl_pipeline(folder, refiner=False, seed=0):
    """A StableDiffusionXLPipeline (or the refiner's img2img pipeline) with tiny random parts, saved to `folder`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    proj = 32
    te2 = text_encoder(64, 3, projection=proj, seed=seed + 1, act="gelu")
    tok2 = tokenizer(folder / "tok2", "stable-diffusion-xl-base-1.0", "tokenizer_2")
    sched = EulerDiscreteScheduler.from_pretrained(XL_SCHEDULER.parent)
    vae = diffusers_vae(seed, scaling=0.13025, upcast=True)
    if refiner:
        cfg = UNetConfig(block_out_channels=(32, 64), attention_levels=(False, True), transformer_depth=(0, 2),
                         transformer_depth_mid=2, num_heads=(2, 2), context_dim=64, use_linear_projection=True,
                         adm_in_channels=proj + 5 * 256, norm_num_groups=8)
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=None, text_encoder_2=te2, tokenizer=None, tokenizer_2=tok2, unet=unet(cfg, seed + 2),
            scheduler=sched, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    else:
        cfg = UNetConfig(block_out_channels=(32, 64), attention_levels=(False, True), transformer_depth=(0, 2),
                         transformer_depth_mid=2, num_heads=(2, 2), context_dim=32 + 64, use_linear_projection=True,
                         adm_in_channels=proj + 6 * 256, norm_num_groups=8)
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder(32, 2, seed=seed + 3), text_encoder_2=te2,
            tokenizer=tokenizer(folder / "tok"), tokenizer_2=tok2, unet=unet(cfg, seed + 2), scheduler=sched)
    pipe.save_pretrained(folder)
    return pipe


def sd_single_file(folder, seed=0, in_channels=4):
    """A tiny SD 1.x pipeline saved as a diffusers folder and as one original-layout .safetensors file holding
    UNet, VAE and text encoder. Sizes follow the rules a single file is read with (32 norm groups, 8 UNet heads,
    text head size 64), so the file's configuration read off its shapes is the folder's. in_channels=9: the
    SD 1.5 inpainting structure, returned as a StableDiffusionInpaintPipeline."""
    import safetensors.torch as st
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from minunet import load_unet, original_state_dict
    from minunet.keymaps import vae as vae_keys

    cfg = UNetConfig(block_out_channels=(32, 64), attention_levels=(True, True), transformer_depth=(1, 1),
                     num_heads=(8, 8), context_dim=64, in_channels=in_channels)
    pipe = (StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline)(
        vae=diffusers_vae(seed, groups=32), text_encoder=text_encoder(64, 2, seed=seed + 1, heads=1),
        tokenizer=tokenizer(folder / "tok"), unet=unet(cfg, seed + 2),
        scheduler=EulerDiscreteScheduler.from_pretrained(SD_SCHEDULER.parent),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    state = {k: v.contiguous() for k, v in original_state_dict(load_unet(folder / "pipe" / "unet")).items()}
    vae = vae_keys.diffusers_to_original(pipe.vae.state_dict(), 2, 1)
    state.update({"first_stage_model." + k: v.contiguous() for k, v in vae.items()})
    for k, v in pipe.text_encoder.state_dict().items():
        k = k if k.startswith("text_model.") else "text_model." + k
        state["cond_stage_model.transformer." + k] = v.contiguous()
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    path = folder / "tiny-sd1.safetensors"
    st.save_file(state, path)
    return pipe, path


UPSCALER_SCHEDULER = CONFIGS / "sd-x2-latent-upscaler" / "scheduler" / "scheduler_config.json"


def latent_upscaler_pipeline(folder, seed=0):
    """A StableDiffusionLatentUpscalePipeline with tiny random parts (the K-UNet's structure at widths 32 / 64, the
    shared tiny VAE and text encoder of width 32), saved to `folder` and returned. It upscales sd_pipeline's latents."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel

    from minunet.models.kunet import KUNetConfig

    cfg = KUNetConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=2, head_size=16, context_dim=32,
                      time_cond_dim=128 + 32)  # timestep_cond: 128 noise-level features ++ pooled text (32)
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=diffusers_vae(seed), text_encoder=text_encoder(32, 2, seed=seed + 1),
        tokenizer=tokenizer(folder / "tok", "sd-x2-latent-upscaler"),
        unet=randomize_(UNet2DConditionModel(**to_diffusers(cfg)).eval(), seed + 2),
        scheduler=EulerDiscreteScheduler.from_pretrained(UPSCALER_SCHEDULER.parent))
    pipe.save_pretrained(folder)
    return pipe


def sd_inpaint_pipeline(folder, seed=0):
    """A StableDiffusionInpaintPipeline with tiny random parts and the SD 1.5 inpainting UNet structure (9 input
    channels: latents, mask, masked-image latents), saved to `folder` and returned."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline

    cfg = UNetConfig(in_channels=9, block_out_channels=(32, 64), attention_levels=(True, True),
                     transformer_depth=(1, 1), num_heads=(2, 2), context_dim=32, norm_num_groups=8)
    pipe = StableDiffusionInpaintPipeline(
        vae=diffusers_vae(seed), text_encoder=text_encoder(32, 2, seed=seed + 1), tokenizer=tokenizer(folder / "tok"),
        unet=unet(cfg, seed + 2), scheduler=EulerDiscreteScheduler.from_pretrained(SD_SCHEDULER.parent),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return pipe


# ---- comparing minunet's Pipeline with diffusers' -------------------------------------------------------------------

SCHEDULERS = {"euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler", "ddim": "DDIMScheduler",
              "dpmpp_2m": "DPMSolverMultistepScheduler"}  # minunet sampler -> the diffusers scheduler it equals


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def diffusers_pipe(cls_name, folder, sampler="euler", **kw):
    """diffusers.`cls_name` from `folder`, with the scheduler that minunet's `sampler` equals, no progress bar."""
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, **kw)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check(ours_fn, theirs_fn):
    """Same call through both: latents within 1e-4 of their scale, decoded images ([0, 1]) within 1e-3."""
    a = ours_fn(output_type="latent", progress=False).images
    b = theirs_fn(output_type="latent").images
    assert_close(a, b, rel=1e-4, msg="latents")
    a = ours_fn(output_type="pt", progress=False).images
    b = theirs_fn(output_type="pt").images
    torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
    return a
