"""minunet: a minimal, readable Stable Diffusion UNet (SD 1.x, 2.x, SDXL) that matches diffusers."""
from .config import PRESETS, SD15, SD21, SDXL, SDXL_REFINER, UNetConfig
from .io import CheckpointError
from .unet import UNet
from .loading import config_from_shapes, load_unet, original_state_dict
from .schedulers import SAMPLERS, AlphaSteps, Schedule, SigmaSteps, sample_ddim, sample_euler, sample_euler_ancestral
from .text import TextConditioner, TextEmbeddings, load_text_conditioner, tiny_text_config
from .vae import SD as VAE_SD
from .vae import SDXL as VAE_SDXL
from .vae import VAE, DiagonalGaussian, VAEConfig, load_vae
from .images import from_pil, to_pil
from .pipeline import Pipeline, PipelineOutput
