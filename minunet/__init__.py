"""minunet: a minimal, readable Stable Diffusion UNet (SD 1.x, 2.x, SDXL) that matches diffusers."""
from .config import PRESETS, SD15, SD21, SDXL, SDXL_REFINER, UNetConfig
from .freeu import FreeU, fourier_filter, list_presets
from .images import from_pil, to_pil
from .io import CheckpointError
from .loading import config_from_shapes, load_unet, original_state_dict
from .schedulers import (SAMPLERS, AlphaSteps, Schedule, SigmaSteps, sample_ddim, sample_dpmpp_2m, sample_euler,
                         sample_euler_ancestral)
from .unet import UNet
from .vae import SD as VAE_SD
from .vae import SDXL as VAE_SDXL
from .vae import VAE, DiagonalGaussian, VAEConfig, load_vae

# the text encoders and the pipeline import transformers (seconds): loaded on first use
_LAZY = {"Pipeline": "pipeline", "PipelineOutput": "pipeline", "TextConditioner": "text", "TextEmbeddings": "text",
         "load_text_conditioner": "text", "tiny_text_config": "text"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'minunet' has no attribute '{name}'")


__all__ = [
    "PRESETS", "SD15", "SD21", "SDXL", "SDXL_REFINER", "UNetConfig", "UNet", "load_unet", "config_from_shapes",
    "original_state_dict", "CheckpointError", "FreeU", "fourier_filter", "list_presets", "from_pil", "to_pil",
    "Pipeline", "PipelineOutput", "SAMPLERS", "AlphaSteps", "Schedule", "SigmaSteps", "sample_ddim", "sample_euler",
    "sample_euler_ancestral", "sample_dpmpp_2m", "TextConditioner", "TextEmbeddings", "load_text_conditioner", "tiny_text_config",
    "VAE_SD", "VAE_SDXL", "VAE", "DiagonalGaussian", "VAEConfig", "load_vae",
]
