"""The models, maths only: the image UNet (unet), the video UNet (video), the K-UNet upscaler (kunet), the VAE (vae),
their config dataclasses and presets. They import blocks/, never a loader or a pipeline."""
