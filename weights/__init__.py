"""Reference data shipped with minunet as `minunet.weights`: configs, manifests, tokenizer files, and one model,
the tiny Stable Diffusion that `minunet train-tiny` trains (`Pipeline.tiny()`, `--model tiny`), and its inpainting
twin (`Pipeline.tiny_inpainting()`, `--model tiny-inpainting`).

See weights/README.md for where each file came from. `WEIGHTS` is this folder, installed or in a checkout.
"""
from pathlib import Path

WEIGHTS = Path(__file__).parent
CONFIGS = WEIGHTS / "configs"
MANIFESTS = WEIGHTS / "manifests"
TOKENIZER = WEIGHTS / "tokenizers" / "clip-bpe"
TINY_MODEL = WEIGHTS / "tiny" / "tiny-sd.safetensors"  # original single-file layout, float16
TINY_UPSCALER = WEIGHTS / "tiny" / "tiny-upscaler.safetensors"  # its x2 latent upscaler's K-UNet, float16
TINY_SIZE = 32                                           # pixels: the size it was trained at
TINY_GUIDANCE = 3.0  # its default guidance scale: 7.5 rounds squares into circles (the sweep in the README)
TINY_INPAINTING = WEIGHTS / "tiny" / "tiny-inpainting.safetensors"  # its 9-channel inpainting twin, same layout
TINY_VIDEO_MODEL = WEIGHTS / "tiny" / "tiny-video.safetensors"  # its video UNet (ModelScope layout), float16
TINY_VIDEO_FRAMES = 8                                            # the clip length it was trained at
