"""minunet: a minimal, readable Stable Diffusion UNet (SD 1.x, 2.x, SDXL) that matches diffusers."""
from .models.config import FAMILIES, PRESETS, SD15, SD21, SDXL, SDXL_REFINER, UNetConfig, family
from .freeu import FreeU, fourier_filter, list_presets
from .pipelines.images import from_pil, to_pil
from .errors import CheckpointError, NonFiniteError
from .loading.unet import config_from_shapes, load_unet, original_state_dict
from .loading.lora import Lora, load_lora, new_lora
from .schedulers import (SAMPLERS, AlphaSteps, Schedule, SigmaSteps, sample_ddim, sample_dpmpp_2m, sample_euler,
                         sample_euler_ancestral)
from .models.unet import UNet
from .models.kunet import SD_X2_LATENT_UPSCALER, KUNet, KUNetConfig
from .models.vae import SD as VAE_SD
from .models.vae import SDXL as VAE_SDXL
from .models.vae import VAE, DiagonalGaussian, VAEConfig
from .loading.vae import load_vae
from .models.video import MS_1_7B, VideoUNet, VideoUNetConfig
from .pipelines.video_io import export_video

# the text encoders and the pipeline import transformers (seconds): loaded on first use
_LAZY = {"Pipeline": "pipelines.image", "PipelineOutput": "pipelines.image", "TextConditioner": "loading.text", "TextEmbeddings": "loading.text",
         "load_text_conditioner": "loading.text", "tiny_text_config": "loading.text",
         "UpscalePipeline": "pipelines.upscale", "UpscaleOutput": "pipelines.upscale",
         "VideoPipeline": "pipelines.video", "VideoPipelineOutput": "pipelines.video"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'minunet' has no attribute '{name}'")


__all__ = [
    "FAMILIES", "family", "PRESETS", "SD15", "SD21", "SDXL", "SDXL_REFINER", "UNetConfig", "UNet", "load_unet", "config_from_shapes",
    "original_state_dict", "CheckpointError", "NonFiniteError", "FreeU", "fourier_filter", "list_presets", "from_pil", "to_pil",
    "Pipeline", "PipelineOutput", "SAMPLERS", "AlphaSteps", "Schedule", "SigmaSteps", "sample_ddim", "sample_euler",
    "sample_euler_ancestral", "sample_dpmpp_2m", "TextConditioner", "TextEmbeddings", "load_text_conditioner",
    "tiny_text_config",
    "VAE_SD", "VAE_SDXL", "VAE", "DiagonalGaussian", "VAEConfig", "load_vae", "Lora", "load_lora", "new_lora",
    "KUNet", "KUNetConfig", "SD_X2_LATENT_UPSCALER", "UpscalePipeline", "UpscaleOutput",
    "VideoUNet", "VideoUNetConfig", "MS_1_7B", "export_video", "VideoPipeline", "VideoPipelineOutput",
]
