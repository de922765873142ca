"""The runners: image (txt2img, img2img, inpainting, refiner), video, upscale, and what they share."""
