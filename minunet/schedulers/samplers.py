"""Samplers as plain functions over a model callable, k-diffusion style: no scheduler object, no step() state.

    x = sample_euler(model_fn, noise, schedule, 30)                                       # text-to-image
    x = sample_ddim(model_fn, noise, schedule, 50, init_latents=x0, strength=0.75)         # img2img
    x = sample_euler(base_fn, noise, schedule, 40, denoising_end=0.8)                      # SDXL base ...
    x = sample_euler(refiner_fn, None, schedule, 40, init_latents=x, denoising_start=0.8)  # ... then refiner

model_fn(x_in, t) -> raw UNet output (epsilon, v or x0, per schedule.prediction_type) for the already scaled
input x_in and the timestep t exactly as diffusers passes it to the UNet (a 0-d tensor from the timesteps:
float32 for the Euler samplers, int64 for DDIM). Classifier-free guidance belongs inside model_fn.

noise is unit Gaussian. How a run starts (as diffusers' pipelines):
  text-to-image (no init_latents)   noise * init_noise_sigma
  strength (img2img)                init_latents noised to the first kept step (Steps.add_noise)
  denoising_start (SDXL refiner)    init_latents as they are: the base run's output, already at that noise level
The window arguments are those of Schedule.steps. Each sampler returns the final latents, what diffusers'
loop leaves in `latents`, and calls callback(i, t, x) after step i when one is given.

The samplers carry x in float32, as diffusers' step() computes (model_fn may run a half-precision UNet and
return its output in any float dtype). Random draws match diffusers': one torch.randn(x.shape) per step where
its scheduler draws one, made on the generator's device and moved to x's, so one torch.Generator seeds both
alike; a list of generators, one per sample, draws each sample's noise from its own (minunet.noise.randn).
"""
from ..noise import randn
from .prediction import denoised, unet_input, x0_and_eps


def sample_euler(model_fn, noise, schedule, num_steps, *, init_latents=None, strength=None,
                 denoising_start=None, denoising_end=None, generator=None, callback=None):
    """Euler steps on the probability-flow ODE: Karras et al. 2022, Algorithm 2 without churn.

    Same maths as diffusers' EulerDiscreteScheduler with s_churn=0; draws no noise (generator is accepted
    only so that the three samplers share a signature).
    """
    steps = schedule.steps(num_steps, "euler", strength=strength, denoising_start=denoising_start,
                           denoising_end=denoising_end)
    x = _first_latents(steps, noise, init_latents, strength, denoising_start)
    for i, t in enumerate(steps.timesteps):
        sigma, sigma_next = steps.sigmas[i], steps.sigmas[i + 1]
        x0 = denoised(model_fn(unet_input(x, sigma), t), x, sigma, schedule.prediction_type)
        d = (x - x0) / sigma  # dx/dsigma
        x = x + d * (sigma_next - sigma)
        if callback is not None:
            x = _replaced(callback(i, t, x), x)
    return x


def sample_euler_ancestral(model_fn, noise, schedule, num_steps, *, init_latents=None, strength=None,
                           denoising_start=None, denoising_end=None, generator=None, callback=None):
    """Ancestral Euler: an Euler step down to sigma_down, then fresh noise back up to sigma_next.

    k-diffusion's sample_euler_ancestral with eta=1; same maths as diffusers' EulerAncestralDiscreteScheduler.
    """
    steps = schedule.steps(num_steps, "euler_ancestral", strength=strength, denoising_start=denoising_start,
                           denoising_end=denoising_end)
    x = _first_latents(steps, noise, init_latents, strength, denoising_start)
    for i, t in enumerate(steps.timesteps):
        sigma, sigma_next = steps.sigmas[i], steps.sigmas[i + 1]
        x0 = denoised(model_fn(unet_input(x, sigma), t), x, sigma, schedule.prediction_type)
        # split sigma_next^2 = sigma_down^2 + sigma_up^2 so that the added noise is the DDPM posterior's
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        d = (x - x0) / sigma
        x = x + d * (sigma_down - sigma)
        # drawn on every step, the last (sigma_up = 0) too
        x = x + randn(x.shape, generator, x.device, x.dtype) * sigma_up
        if callback is not None:
            x = _replaced(callback(i, t, x), x)
    return x


def sample_ddim(model_fn, noise, schedule, num_steps, *, eta=0.0, init_latents=None, strength=None,
                denoising_start=None, denoising_end=None, generator=None, callback=None):
    """DDIM: Song et al. 2021, eq. 12; eta=0 is deterministic, eta=1 adds the DDPM posterior's noise.

    Same maths as diffusers' DDIMScheduler (use_clipped_model_output=False); draws noise only when eta > 0.
    """
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    steps = schedule.steps(num_steps, "ddim", strength=strength, denoising_start=denoising_start,
                           denoising_end=denoising_end)
    x = _first_latents(steps, noise, init_latents, strength, denoising_start)
    for i, t in enumerate(steps.timesteps):
        abar, abar_prev = steps.alphas_cumprod[i], steps.alphas_cumprod_prev[i]
        x0, eps = x0_and_eps(model_fn(x, t), x, abar, schedule.prediction_type)
        if schedule.clip_sample:
            x0 = x0.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)
        # eq. 16: sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)
        std = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x = abar_prev**0.5 * x0 + (1 - abar_prev - std**2) ** 0.5 * eps
        if eta > 0:
            x = x + std * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            x = _replaced(callback(i, t, x), x)
    return x


def _first_latents(steps, noise, init_latents, strength, denoising_start):
    """The x a run starts from; see the module docstring."""
    if denoising_start is not None:
        if init_latents is None:
            raise ValueError("denoising_start needs init_latents: the latents the base run stopped at")
        return init_latents.float()
    if strength is not None:
        if init_latents is None or noise is None:
            raise ValueError("strength (img2img) needs init_latents (the clean image latents) and noise")
        return steps.add_noise(init_latents.float(), noise.float())
    if init_latents is not None:
        raise ValueError("init_latents are used only with strength (img2img) or denoising_start (refiner)")
    if noise is None:
        raise ValueError("noise is needed to start a text-to-image run")
    return noise.float() * steps.init_noise_sigma


def _replaced(out, x):
    return x if out is None else out
