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
