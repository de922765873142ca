"""Samplers as small loops over a denoiser, k-diffusion style: no scheduler object, no step() state.

    x = sample_euler(model_fn, noise, schedule, 30)                                       # text-to-image
    x = sample_dpmpp_2m(model_fn, noise, schedule, 25)                                    # DPM-Solver++ 2M
    x = sample_ddim(model_fn, noise, schedule, 50, init_latents=x0, strength=0.75)         # img2img
    x = sample_euler(base_fn, noise, schedule, 40, denoising_end=0.8)                      # SDXL base ...
    x = sample_euler(refiner_fn, None, schedule, 40, init_latents=x, denoising_start=0.8)  # ... then refiner

Three seams, each testable alone:
  model_fn(x_in, t) -> raw UNet output (epsilon, v or x0, per schedule.prediction_type) for the scaled input x_in
      and the timestep t exactly as diffusers passes it to the UNet. Classifier-free guidance wraps it
      (guidance.py); so do inpainting's extra input channels.
  denoise(x, sigma) -> x0 at Euler's x = x0 + sigma eps: the Denoiser of prediction.py around model_fn.
  loop(denoise, x, steps, *, generator, callback) -> x: euler, euler_a, dpmpp_2m below, over steps.sigmas.
      DDIM keeps its alpha-space loop over x_t (what diffusers' DDIMScheduler computes).
SAMPLERS is the one table of them that the package, Pipeline and the CLI read.

How a run starts (as diffusers' pipelines; Steps.start):
  text-to-image (no init_latents)   noise * init_noise_sigma
  strength (img2img)                init_latents noised to the first kept step (Steps.add_noise)
  denoising_start (SDXL refiner)    init_latents as they are: the base run's output, already at that noise level
The window arguments are those of Schedule.steps. Each sampler returns the final latents, what diffusers' loop
leaves in `latents`, and calls callback(i, t, latents) after step i with those latents in the same convention
(diffusers' Euler latents are x = x0 + sigma eps, its DPM-Solver and DDIM latents x_t); a tensor the callback
returns replaces the latents (inpainting blends the known region back there).

The samplers carry x in float32, as diffusers' step() computes (model_fn may run a half-precision UNet and
return its output in any float dtype). Random draws match diffusers': one torch.randn(x.shape) per step where
its scheduler draws one, made on the generator's device and moved to x's, so one torch.Generator seeds both
alike; a list of generators, one per sample, draws each sample's noise from its own (minunet.noise.randn).
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..checks import short
from ..noise import randn


def euler(denoise, x, steps, *, generator=None, callback=None):
    """Euler steps on the probability-flow ODE: Karras et al. 2022, Algorithm 2 without churn.
    Same maths as diffusers' EulerDiscreteScheduler with s_churn=0; draws no noise."""
    for i, t in enumerate(steps.timesteps):
        sigma, sigma_next = steps.sigmas[i], steps.sigmas[i + 1]
        d = (x - denoise(x, sigma)) / sigma  # dx/dsigma
        x = _after_step(callback, i, t, x + d * (sigma_next - sigma))
    return x


def euler_ancestral(denoise, x, steps, *, generator=None, callback=None):
    """Ancestral Euler: an Euler step down to sigma_down, then fresh noise back up to sigma_next.
    k-diffusion's sample_euler_ancestral with eta=1; same maths as diffusers' EulerAncestralDiscreteScheduler."""
    for i, t in enumerate(steps.timesteps):
        sigma, sigma_next = steps.sigmas[i], steps.sigmas[i + 1]
        x0 = denoise(x, sigma)
        # split sigma_next^2 = sigma_down^2 + sigma_up^2 so that the added noise is the DDPM posterior's
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x + (x - x0) / sigma * (sigma_down - sigma)
        x = x + randn(x.shape, generator, x.device, x.dtype) * sigma_up  # drawn on every step, the last too
        x = _after_step(callback, i, t, x)
    return x


def dpmpp_2m(denoise, x, steps, *, generator=None, callback=None):
    """DPM-Solver++(2M): Lu et al. 2022, Algorithm 2 (multistep, data prediction, midpoint), in Euler's x.

    With lambda = -log sigma (log-SNR / 2) and h = lambda_next - lambda, each step is exact for an x0 that is
    linear in lambda: x_next = (sigma_next / sigma) x - expm1(-h) D, where D = x0 on the first step and onto
    sigma = 0 (diffusers' lower_order_final, final_sigmas_type="zero"), else x0 + (x0 - x0_prev) / (2 r) with
    r = h_prev / h. Same maths as diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint), which
    writes it for x_t = x / sqrt(sigma^2 + 1); draws no noise."""
    x0_prev = h_prev = None
    for i, t in enumerate(steps.timesteps):
        sigma, sigma_next = steps.sigmas[i], steps.sigmas[i + 1]
        x0 = denoise(x, sigma)
        if sigma_next == 0:
            x = x0  # the first-order step's limit: all noise removed
        else:
            h = sigma.log() - sigma_next.log()
            d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2 * h_prev))
            x = (sigma_next / sigma) * x - (-h).expm1() * d
            x0_prev, h_prev = x0, h
        x = _after_step(callback, i, t, x)
    return x


def ddim(denoise, x, steps, *, eta=0.0, generator=None, callback=None):
    """DDIM: Song et al. 2021, eq. 12 on x_t; eta=0 is deterministic, eta=1 adds the DDPM posterior's noise.
    Same maths as diffusers' DDIMScheduler (use_clipped_model_output=False); draws noise only when eta > 0.
    denoise(x_t, t, abar) -> (x0, eps): prediction.AlphaDenoiser."""
    for i, t in enumerate(steps.timesteps):
        abar, abar_prev = steps.alphas_cumprod[i], steps.alphas_cumprod_prev[i]
        x0, eps = denoise(x, t, abar)
        # eq. 16: sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)
        std = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x = abar_prev**0.5 * x0 + (1 - abar_prev - std**2) ** 0.5 * eps
        if eta > 0:
            x = x + std * randn(x.shape, generator, x.device, x.dtype)
        x = _after_step(callback, i, t, x)
    return x


def _after_step(callback, i, t, x):
    """callback(i, t, x) after step i; a tensor it returns replaces x."""
    if callback is None:
        return x
    out = callback(i, t, x)
    return x if out is None else out


@dataclass(frozen=True)
class Sampler:
    loop: Callable         # loop(denoise, x, steps, *, generator, callback, **options)
    steps: str             # the timesteps / sigmas it runs on (Schedule.steps): "euler", "dpm" or "ddim"
    default_spacing: str   # diffusers' default timestep_spacing for its scheduler, when the config names none
    options: tuple = ()    # extra keyword options of the loop
    oracle: str = ""       # the diffusers scheduler it reproduces


SAMPLERS = {
    "euler": Sampler(euler, "euler", "linspace", oracle="EulerDiscreteScheduler"),
    "euler_a": Sampler(euler_ancestral, "euler", "linspace", oracle="EulerAncestralDiscreteScheduler"),
    "ddim": Sampler(ddim, "ddim", "leading", ("eta",), oracle="DDIMScheduler"),
    "dpmpp_2m": Sampler(dpmpp_2m, "dpm", "linspace", oracle="DPMSolverMultistepScheduler"),
}


def sampler_spec(name):
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not supported; use one of {tuple(SAMPLERS)}")
    return SAMPLERS[name]


def sample(sampler, model_fn, noise, schedule, num_steps, *, init_latents=None, strength=None,
           denoising_start=None, denoising_end=None, generator=None, callback=None, **options):
    """One run of the named sampler: its steps from the schedule, the start latents, the loop, the result."""
    spec = sampler_spec(sampler)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"sampler {sampler!r} takes no option {sorted(unknown)} (its options: {spec.options})")
    eta = options.get("eta", 0.0)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta={eta!r} must be >= 0 and finite")  # NaN passes a plain `eta < 0` test
    check_generator(generator)
    check_callback(callback)
    steps = schedule.steps(num_steps, sampler, strength=strength, denoising_start=denoising_start,
                           denoising_end=denoising_end)
    x = steps.start(noise, init_latents, strength, denoising_start)
    denoise = steps.denoiser(model_fn, schedule)
    x = spec.loop(denoise, x, steps, generator=generator, callback=steps.wrap_callback(callback), **options)
    return steps.finish(x)


def sample_euler(model_fn, noise, schedule, num_steps, *, init_latents=None, strength=None,
                 denoising_start=None, denoising_end=None, generator=None, callback=None):
    """Euler (see euler); the generator is accepted only so that the samplers share a signature."""
    return sample("euler", model_fn, noise, schedule, num_steps, init_latents=init_latents, strength=strength,
                  denoising_start=denoising_start, denoising_end=denoising_end, generator=generator,
                  callback=callback)


def sample_euler_ancestral(model_fn, noise, schedule, num_steps, *, init_latents=None, strength=None,
                           denoising_start=None, denoising_end=None, generator=None, callback=None):
    """Euler ancestral (see euler_ancestral)."""
    return sample("euler_a", model_fn, noise, schedule, num_steps, init_latents=init_latents, strength=strength,
                  denoising_start=denoising_start, denoising_end=denoising_end, generator=generator,
                  callback=callback)


def sample_dpmpp_2m(model_fn, noise, schedule, num_steps, *, init_latents=None, strength=None,
                    denoising_start=None, denoising_end=None, generator=None, callback=None):
    """DPM-Solver++ 2M (see dpmpp_2m); Karras sigmas with the schedule's use_karras_sigmas."""
    return sample("dpmpp_2m", model_fn, noise, schedule, num_steps, init_latents=init_latents, strength=strength,
                  denoising_start=denoising_start, denoising_end=denoising_end, generator=generator,
                  callback=callback)


def sample_ddim(model_fn, noise, schedule, num_steps, *, eta=0.0, init_latents=None, strength=None,
                denoising_start=None, denoising_end=None, generator=None, callback=None):
    """DDIM (see ddim)."""
    return sample("ddim", model_fn, noise, schedule, num_steps, init_latents=init_latents, strength=strength,
                  denoising_start=denoising_start, denoising_end=denoising_end, generator=generator,
                  callback=callback, eta=eta)


def check_generator(value):
    """None, a torch.Generator, or a non-empty list of them."""
    if value is None or isinstance(value, torch.Generator):
        return value
    if isinstance(value, (list, tuple)) and value:
        for i, g in enumerate(value):
            if not isinstance(g, torch.Generator):
                raise TypeError(f"generator[{i}] must be a torch.Generator, got {short(g)}")
        return value
    raise TypeError(f"generator must be None, a torch.Generator or a list of them (one per sample), got "
                    f"{short(value)}; e.g. torch.Generator().manual_seed(0)")


def check_callback(value):
    if value is not None and not callable(value):
        raise TypeError(f"callback must be None or a callable (i, t, latents), got {short(value)}")
    return value
