"""From files to models: safetensors reading (io), single-file and folder loading, diffusers config translation,
shape-based detection, official-file recognition (inspect), conversion (convert), LoRA files (lora), text encoders."""
