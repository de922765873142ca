"""The noise schedule: which timesteps a sampler visits and how much noise there is at each.

    schedule = Schedule.from_config(json.load(open(".../scheduler/scheduler_config.json")))
    steps = schedule.steps(30)                        # SigmaSteps for Euler: timesteps (30,), sigmas (31,)
    steps = schedule.steps(30, "dpmpp_2m")            # SigmaSteps on DPM-Solver's integer timesteps
    steps = schedule.steps(30, "ddim", strength=0.6)  # AlphaSteps for the last 18 of 30 steps (img2img)

Two views of the same forward process, as the two sampler families use them:
  variance preserving (DDIM, and what the UNet sees):  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
  variance exploding (Euler, Karras et al. 2022):      x   = x0 + sigma_t eps,  sigma_t = sqrt((1 - abar_t) / abar_t)
so x = x_t / sqrt(abar_t) and the UNet input is x / sqrt(sigma^2 + 1).

Everything matches diffusers 0.42 (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DDIMScheduler,
DPMSolverMultistepScheduler and the Stable Diffusion / SDXL pipelines' partial schedules) with these deliberate
differences:
- `timestep_spacing="trailing"` always gives `num_steps` timesteps; diffusers' float `np.arange` gives one extra
  timestep (-1) for 62 step counts out of 1..1000 (61, 103, 121, ...). Where diffusers gives n, both agree.
- Euler ancestral uses exactly Euler's sigmas, so `use_karras_sigmas` and `interpolation_type` apply to it;
  diffusers' EulerAncestralDiscreteScheduler ignores both keys.
- DDIM raises a ValueError for `use_karras_sigmas` / `interpolation_type="log_linear"` (diffusers' DDIM ignores
  them), for a `leading` schedule that would index past the last training timestep (diffusers: IndexError), and
  for an epsilon model on a zero-SNR schedule that visits abar = 0 (diffusers divides by zero there).
- Euler with `rescale_betas_zero_snr` is diffusers' choice: the last abar is clamped to 2**-24 (sigma ~ 4096).
- DPM-Solver++ raises for `interpolation_type="log_linear"` (diffusers' DPMSolverMultistepScheduler has no such
  option and ignores the key).
"""
from dataclasses import dataclass, fields

import numpy as np
import torch

from .. import checks
from .prediction import AlphaDenoiser, Denoiser
from .samplers import sampler_spec

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")

# diffusers options this module does not implement: a config may name them only with these (default) values
_UNSUPPORTED = {
    "thresholding": (False,),
    "use_exponential_sigmas": (False, None),
    "use_beta_sigmas": (False, None),
    "timestep_type": ("discrete",),
    "final_sigmas_type": ("zero",),
    "sigma_min": (None,),
    "sigma_max": (None,),
}


def _choice(key, value, allowed):
    if value not in allowed:
        raise ValueError(f"scheduler config: {key}={value!r} is not supported; use one of {allowed}")


@dataclass(frozen=True)
class Schedule:
    """Training noise schedule plus inference spacing. Fields are diffusers' config keys, with its defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear"; ignored when trained_betas is given
    trained_betas: tuple | None = None
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" | "v_prediction" | "sample"
    timestep_spacing: str | None = None  # None: the sampler's diffusers default (SAMPLERS[...].default_spacing)
    steps_offset: int = 0  # added to "leading" timesteps only
    use_karras_sigmas: bool = False  # Euler family and DPM-Solver++
    interpolation_type: str = "linear"  # Euler family only: "linear" | "log_linear"
    rescale_betas_zero_snr: bool = False  # Lin et al. 2023, Algorithm 1
    set_alpha_to_one: bool = True  # DDIM only: the last step goes to abar = 1 (else to abar_0)
    clip_sample: bool = True  # DDIM only: clamp predicted x0 to +-clip_sample_range (diffusers' DDIM default)
    clip_sample_range: float = 1.0

    def __post_init__(self):
        self._check_numbers()
        _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _choice("timestep_spacing", self.timestep_spacing, (None,) + SPACINGS)
        _choice("interpolation_type", self.interpolation_type, ("linear", "log_linear"))
        if self.trained_betas is None:
            _choice("beta_schedule", self.beta_schedule, ("linear", "scaled_linear"))
        elif len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(f"scheduler config: trained_betas has {len(self.trained_betas)} values, "
                             f"num_train_timesteps is {self.num_train_timesteps}; they must agree")
        if self.num_train_timesteps < 1:
            raise ValueError(f"scheduler config: num_train_timesteps={self.num_train_timesteps} must be >= 1")

    def _check_numbers(self):
        """Types and ranges: betas in (0, 1) (a NaN or negative beta gives NaN images), integer counts."""
        checks.integer("scheduler config: num_train_timesteps", self.num_train_timesteps, 1)
        checks.integer("scheduler config: steps_offset", self.steps_offset, 0)
        for f in ("beta_start", "beta_end"):
            checks.number(f"scheduler config: {f}", getattr(self, f), 0, 1, low_open=True, high_open=True)
        for i, b in enumerate(self.trained_betas or ()):
            checks.number(f"scheduler config: trained_betas[{i}]", b, 0, 1, low_open=True, high_open=True)
        checks.number("scheduler config: clip_sample_range", self.clip_sample_range, 0, low_open=True)
        for f in ("use_karras_sigmas", "rescale_betas_zero_snr", "set_alpha_to_one", "clip_sample"):
            checks.flag(f"scheduler config: {f}", getattr(self, f))

    @classmethod
    def from_config(cls, config: dict) -> "Schedule":
        """Translate a diffusers scheduler_config.json dict; keys this module does not use are ignored."""
        for key, allowed in _UNSUPPORTED.items():
            if key in config:
                _choice(key, config[key], allowed)
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in known}
        if kwargs.get("trained_betas") is not None:
            if not isinstance(kwargs["trained_betas"], (list, tuple)):
                raise TypeError(f"scheduler config: trained_betas must be a list of numbers, got "
                                f"{type(kwargs['trained_betas']).__name__}")
            kwargs["trained_betas"] = tuple(kwargs["trained_betas"])
        kwargs["use_karras_sigmas"] = bool(kwargs.get("use_karras_sigmas"))  # configs may say null
        if kwargs.get("prediction_type") == "original_sample":  # diffusers' older name of "sample" (x2 upscaler)
            kwargs["prediction_type"] = "sample"
        return cls(**kwargs)

    # ---- training schedule (float32, as diffusers) ----

    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0 .. T-1, float32 (T,)."""
        T = self.num_train_timesteps
        if self.trained_betas is not None:
            betas = torch.tensor(self.trained_betas, dtype=torch.float32)
        elif self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float32)
        else:  # scaled_linear: linear in sqrt(beta), the Stable Diffusion schedule
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float32) ** 2
        if self.rescale_betas_zero_snr:
            betas = _rescale_zero_terminal_snr(betas)
        return torch.cumprod(1 - betas, dim=0)

    def train_sigmas(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0 .. T-1, float32 (T,), increasing."""
        abar = self.alphas_cumprod()
        if self.rescale_betas_zero_snr:
            abar[-1] = 2**-24  # abar_T = 0 would make sigma infinite; diffusers' Euler clamps it (sigma ~ 4096)
        return ((1 - abar) / abar) ** 0.5

    # ---- inference steps ----

    def timesteps(self, num_steps, sampler="euler", *, strength=None, denoising_start=None, denoising_end=None):
        """The timesteps `sampler` passes to the UNet: float32 for the Euler family, int64 for DDIM and DPM."""
        return self.steps(num_steps, sampler, strength=strength, denoising_start=denoising_start,
                          denoising_end=denoising_end).timesteps

    def steps(self, num_steps, sampler="euler", *, strength=None, denoising_start=None, denoising_end=None):
        """What one run of `sampler` visits: SigmaSteps (euler, euler_a, dpmpp_2m) or AlphaSteps (ddim).

        num_steps is the full schedule's length; the optional window keeps part of it, as diffusers' pipelines:
          strength         img2img: the last int(num_steps * strength) steps
          denoising_start  SDXL refiner: the steps with t < round(T * (1 - denoising_start))
          denoising_end    SDXL base: stop before the first step with t < round(T * (1 - denoising_end))
        """
        spec = sampler_spec(sampler)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps={num_steps!r} must be an integer from 1 to num_train_timesteps="
                             f"{self.num_train_timesteps}")
        spacing = self.timestep_spacing or spec.default_spacing
        build = {"euler": self._sigma_steps, "dpm": self._dpm_steps, "ddim": self._alpha_steps}[spec.steps]
        return build(num_steps, spacing, strength, denoising_start, denoising_end)

    def _spaced(self, n, spacing):
        """n descending timesteps (float64), before any rounding to integers or Karras re-spacing."""
        T = self.num_train_timesteps
        if spacing == "linspace":  # evenly from T-1 to 0; fractional unless (T-1)/(n-1) is whole
            return np.linspace(0, T - 1, n)[::-1]
        if spacing == "leading":  # multiples of T // n from 0, shifted: never reaches T-1
            return (np.arange(n) * (T // n) + self.steps_offset)[::-1].astype(np.float64)
        # trailing: from T-1 down in strides of T/n, rounded; always starts at T-1 (needed for zero SNR)
        return np.round(T - np.arange(n) * (T / n)) - 1

    def _sigma_steps(self, n, spacing, strength, denoising_start, denoising_end):
        train = self.train_sigmas().numpy()  # float32 (T,)
        log_train = np.log(train)  # float32 logs, as diffusers
        timesteps = self._spaced(n, spacing).astype(np.float32)
        if self.interpolation_type == "linear":  # piecewise-linear sigma(t) at each timestep
            sigmas = np.interp(timesteps, np.arange(len(train)), train)
        else:  # log_linear: n+1 sigmas log-spaced from the largest to the smallest training sigma, whatever the
            # timesteps; the last step ends at sigma_0, not 0 (diffusers appends a 0 that no step reaches)
            sigmas = torch.linspace(log_train[-1], log_train[0], n + 1).exp().numpy()
        if self.use_karras_sigmas:  # Karras et al. 2022 eq. 5 between the end sigmas, then t = sigma^-1(sigma)
            sigmas = _karras_sigmas(float(sigmas[0]), float(sigmas[-1]), n)
            timesteps = _sigma_to_t(sigmas, log_train).astype(np.float32)
        if len(sigmas) == n:  # the last step lands on sigma = 0
            sigmas = np.append(sigmas, 0.0)
        sigmas = torch.from_numpy(sigmas.astype(np.float32))
        timesteps = torch.from_numpy(timesteps.copy())
        # pure noise for a full run: max sigma, or unit variance at the UNet input for "leading" (diffusers' rule)
        init_noise_sigma = sigmas.max() if spacing != "leading" else (sigmas.max() ** 2 + 1) ** 0.5
        begin, end = self._window(timesteps, n, strength, denoising_start, denoising_end)
        return SigmaSteps(timesteps[begin:end], sigmas[begin:end + 1], init_noise_sigma)

    def _dpm_steps(self, n, spacing, strength, denoising_start, denoising_end):
        """DPMSolverMultistepScheduler's integer timesteps (its own linspace / leading rules: n + 1 points with the
        last dropped), sigma interpolated at each, or Karras sigmas over the whole training range with rounded
        timesteps; a final sigma 0 (final_sigmas_type "zero"). Its latents are x_t (init_noise_sigma 1)."""
        if self.interpolation_type != "linear":
            raise ValueError("DPM-Solver++ has no interpolation_type option: set interpolation_type='linear'")
        T = self.num_train_timesteps
        if spacing == "linspace":
            timesteps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        elif spacing == "leading":
            timesteps = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1] + self.steps_offset
        else:
            timesteps = self._spaced(n, "trailing")
        train = self.train_sigmas().numpy()  # float32 (T,)
        if self.use_karras_sigmas:  # between the largest and smallest training sigma, whatever the spacing
            sigmas = _karras_sigmas(float(train[-1]), float(train[0]), n)
            timesteps = np.round(_sigma_to_t(sigmas, np.log(train)))
        else:
            sigmas = np.interp(timesteps, np.arange(T), train)
        sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
        timesteps = torch.from_numpy(timesteps.astype(np.int64))
        begin, end = self._window(timesteps, n, strength, denoising_start, denoising_end)
        return SigmaSteps(timesteps[begin:end], sigmas[begin:end + 1], torch.tensor(1.0), latents="x_t")

    def _alpha_steps(self, n, spacing, strength, denoising_start, denoising_end):
        T = self.num_train_timesteps
        if self.use_karras_sigmas or self.interpolation_type != "linear":
            raise ValueError("DDIM steps on integer timesteps: set use_karras_sigmas=False and "
                             "interpolation_type='linear', or use an Euler sampler")
        timesteps = np.round(self._spaced(n, spacing)).astype(np.int64)
        if timesteps[0] >= T:
            raise ValueError(f"DDIM: {n} '{spacing}' steps with steps_offset={self.steps_offset} reach timestep "
                             f"{timesteps[0]} >= num_train_timesteps={T}; use fewer steps or 'trailing' spacing")
        timesteps = torch.from_numpy(timesteps.copy())
        abar = self.alphas_cumprod()
        final = torch.tensor(1.0) if self.set_alpha_to_one else abar[0]
        # as diffusers, each step goes to t - T // n, even where the next listed timestep differs (linspace, trailing)
        prev = timesteps - T // n
        abar_prev = torch.where(prev >= 0, abar[prev.clamp(min=0)], final)
        begin, end = self._window(timesteps, n, strength, denoising_start, denoising_end)
        steps = AlphaSteps(timesteps[begin:end], abar[timesteps[begin:end]], abar_prev[begin:end])
        if self.prediction_type == "epsilon" and (steps.alphas_cumprod == 0).any():
            raise ValueError("DDIM: this zero-SNR schedule visits abar = 0, where an epsilon model cannot give x0; "
                             "use a v_prediction model, 'leading' spacing, or an Euler sampler (clamps abar)")
        return steps

    def _window(self, timesteps, n, strength, denoising_start, denoising_end):
        """[begin, end) into the full n-step schedule, with the rounding of diffusers' pipelines."""
        T = self.num_train_timesteps
        begin, end = 0, n
        if strength is not None and denoising_start is not None:
            raise ValueError("give strength (img2img) or denoising_start (refiner), not both")
        if strength is not None:
            if not 0 < strength <= 1:
                raise ValueError(f"strength={strength} must be in (0, 1]")
            begin = n - min(int(n * strength), n)  # StableDiffusionImg2ImgPipeline.get_timesteps
        if denoising_start is not None:
            _check_fraction("denoising_start", denoising_start)
            begin = n - int((timesteps < _cutoff(denoising_start, T)).sum())
        if denoising_end is not None:
            _check_fraction("denoising_end", denoising_end)
            if denoising_start is not None and denoising_start >= denoising_end:
                raise ValueError(f"denoising_start={denoising_start} must be below denoising_end={denoising_end}")
            end = begin + int((timesteps[begin:] >= _cutoff(denoising_end, T)).sum())
        if begin >= end:
            raise ValueError(f"no steps left: num_steps={n}, strength={strength}, denoising_start={denoising_start}"
                             f", denoising_end={denoising_end}; use more steps or a larger fraction")
        return begin, end


@dataclass(frozen=True)
class SigmaSteps:
    """An Euler-family or DPM-Solver run. Its loop works on x = x0 + sigma * eps; the UNet sees
    x / sqrt(sigma^2 + 1) and the timestep. The latents it takes in and gives out are diffusers': x itself for
    the Euler schedulers (latents="x"), x_t = x / sqrt(sigma^2 + 1) for DPM-Solver (latents="x_t")."""

    timesteps: torch.Tensor  # (n,) as diffusers passes them to the UNet (float32, fractional with Karras; DPM int64)
    sigmas: torch.Tensor  # (n + 1,) float32: sigma at each timestep, then where the last step lands
    init_noise_sigma: torch.Tensor  # 0-d float32: scale of the unit noise a full text-to-image run starts from
    latents: str = "x"

    def timestep(self, sigma):
        """The timestep at one of this run's sigmas (what the Denoiser passes to the UNet)."""
        hits = (self.sigmas[:-1] == sigma).nonzero()
        if len(hits) == 0:
            raise ValueError(f"sigma={float(sigma)} is not one of this run's sigmas")
        return self.timesteps[int(hits[0])]

    def denoiser(self, model_fn, schedule):
        return Denoiser(model_fn, schedule.prediction_type, self.timestep)

    def to_x(self, latents, i):
        """diffusers' latents at step i's noise level -> the loop's x."""
        return latents if self.latents == "x" else latents * (self.sigmas[i] ** 2 + 1) ** 0.5

    def from_x(self, x, i):
        return x if self.latents == "x" else x / (self.sigmas[i] ** 2 + 1) ** 0.5

    def add_noise(self, x0, noise, i=0):
        """x0 noised to step i's level, as diffusers' add_noise at timesteps[i] (img2img start: i = 0)."""
        return self.from_x(x0 + noise * self.sigmas[i], i)

    def start(self, noise, init_latents, strength, denoising_start):
        return self.to_x(_first_latents(self, noise, init_latents, strength, denoising_start), 0)

    def finish(self, x):
        return self.from_x(x, len(self.timesteps))

    def wrap_callback(self, callback):
        """The loop's callback(i, t, x) -> the user's callback(i, t, latents), in diffusers' latents."""
        if callback is None or self.latents == "x":
            return callback

        def in_latents(i, t, x):
            out = callback(i, t, self.from_x(x, i + 1))
            return None if out is None else self.to_x(out, i + 1)
        return in_latents


@dataclass(frozen=True)
class AlphaSteps:
    """A DDIM run: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is both the sampler's state and the UNet input."""

    timesteps: torch.Tensor  # (n,) int64
    alphas_cumprod: torch.Tensor  # (n,) float32: abar at each timestep
    alphas_cumprod_prev: torch.Tensor  # (n,) float32: abar each step goes to
    init_noise_sigma: float = 1.0

    def denoiser(self, model_fn, schedule):
        clip = schedule.clip_sample_range if schedule.clip_sample else None
        return AlphaDenoiser(model_fn, schedule.prediction_type, clip)

    def add_noise(self, x0, noise, i=0):
        """x0 noised to step i's timestep, as diffusers' DDIM add_noise at timesteps[i] (img2img start: i = 0)."""
        abar = self.alphas_cumprod[i]
        return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise

    def start(self, noise, init_latents, strength, denoising_start):
        return _first_latents(self, noise, init_latents, strength, denoising_start)

    def finish(self, x):
        return x

    def wrap_callback(self, callback):
        return callback


def _first_latents(steps, noise, init_latents, strength, denoising_start):
    """The latents a run starts from; see samplers.py."""
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


def _check_fraction(name, value):
    if not 0 < value < 1:
        raise ValueError(f"{name}={value} must be a fraction in (0, 1)")


def _cutoff(fraction, T):
    """The timestep at which a fraction of the denoising is done: round(T - fraction * T), as SDXL's pipelines."""
    return int(round(T - fraction * T))


def _rescale_zero_terminal_snr(betas):
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(abar) so that abar_T = 0 and abar_0 is unchanged."""
    sqrt_abar = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])  # undo the cumprod
    return 1 - alphas


def _karras_sigmas(sigma_max, sigma_min, n, rho=7.0):
    """Karras et al. 2022 eq. 5: n sigmas evenly spaced in sigma^(1/rho), float64."""
    ramp = np.linspace(0, 1, n)
    max_r, min_r = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_r + ramp * (min_r - max_r)) ** rho


def _sigma_to_t(sigmas, log_train_sigmas):
    """Fractional timesteps whose sigma is `sigmas`: linear interpolation in log sigma (float64)."""
    log_sigmas = np.log(np.maximum(sigmas, 1e-10))
    return np.interp(log_sigmas, log_train_sigmas.astype(np.float64), np.arange(len(log_train_sigmas)))
