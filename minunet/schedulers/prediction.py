"""What the UNet predicts (epsilon, v or the sample), turned into what the samplers need.

The only place the parameterisation lives, like k-diffusion's CompVisDenoiser / CompVisVDenoiser and sgm's
EpsScaling / VScaling. Two views of x_t = a x0 + b eps with a = sqrt(abar), b = sqrt(1 - abar):
  v = a eps - b x0                                             (Salimans & Ho 2022)
  Euler's x = x_t / a = x0 + sigma eps with sigma = b / a, so a = 1 / sqrt(sigma^2 + 1).
Each formula keeps diffusers' order of operations so float32 results agree to the last bits.
"""


def unet_input(x, sigma):
    """The UNet's x_t from Euler's x = x0 + sigma eps: x_t = x / sqrt(sigma^2 + 1)."""
    return x / (sigma**2 + 1) ** 0.5


def denoised(model_output, x, sigma, prediction_type):
    """x0 estimate at Euler's x = x0 + sigma eps, from the UNet's output for unet_input(x, sigma)."""
    if prediction_type == "epsilon":
        return x - sigma * model_output
    if prediction_type == "v_prediction":  # x0 = a x_t - b v, written in x and sigma
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    return model_output  # "sample": the UNet predicts x0 itself


def x0_and_eps(model_output, x_t, alpha_bar, prediction_type):
    """(x0, eps) estimates at x_t = a x0 + b eps, from the UNet's output for x_t."""
    a, b = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (x_t - b * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * x_t - b * model_output, a * model_output + b * x_t
    return model_output, (x_t - a * model_output) / b  # "sample"


class Denoiser:
    """denoise(x, sigma) -> x0 for Euler's x = x0 + sigma eps, around model_fn(x_in, t) -> raw UNet output.

    k-diffusion's CompVisDenoiser / CompVisVDenoiser in one: the UNet sees x / sqrt(sigma^2 + 1) and the timestep
    sigma_to_t(sigma) (for a run, the exact timestep diffusers passes at that sigma: SigmaSteps.timestep)."""

    def __init__(self, model_fn, prediction_type, sigma_to_t):
        self.model_fn, self.prediction_type, self.sigma_to_t = model_fn, prediction_type, sigma_to_t

    def __call__(self, x, sigma):
        out = self.model_fn(unet_input(x, sigma), self.sigma_to_t(sigma))
        return denoised(out, x, sigma, self.prediction_type)


class AlphaDenoiser:
    """denoise(x_t, t, abar) -> (x0, eps) for DDIM's x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; x0 clamped to
    +-clip_range when clip_range is not None (diffusers' DDIM clip_sample)."""

    def __init__(self, model_fn, prediction_type, clip_range=None):
        self.model_fn, self.prediction_type, self.clip_range = model_fn, prediction_type, clip_range

    def __call__(self, x_t, t, alpha_bar):
        x0, eps = x0_and_eps(self.model_fn(x_t, t), x_t, alpha_bar, self.prediction_type)
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0, eps
