"""From files to models (never a pipeline): safetensors reading (io), the UNet from folders, single files and the Hub
(unet), the diffusers config.json translators (configs), the VAE (vae), the ModelScope video UNet (video), text
encoders (text), LoRA files attached from outside (lora), official-file recognition (official), inspection
(inspect) and conversion (convert)."""
