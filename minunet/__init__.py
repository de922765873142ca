"""minunet: a minimal, readable Stable Diffusion UNet (SD 1.x, 2.x, SDXL) that matches diffusers."""
