"""The building blocks shared by the UNets (image, video, upscaler) and the VAE."""


class ModelDtypeDevice:
    """`model.dtype` / `model.device` of a UNet, read off its first conv (`conv_in`), as diffusers' models have them."""

    @property
    def dtype(self):
        return self.conv_in.weight.dtype

    @property
    def device(self):
        return self.conv_in.weight.device
