"""minunet.schedulers against diffusers' EulerDiscrete, EulerAncestralDiscrete and DDIM schedulers.

The oracle is diffusers' own loop (scale_model_input -> model -> step) on the official scheduler configs and
variants, with the partial schedules of its Stable Diffusion / SDXL pipelines (their get_timesteps called
unbound on a stub that only has `.scheduler`). Both sides get the same model function, noise and seed.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline)

from minunet.schedulers import SAMPLERS, Schedule, sample_ddim, sample_dpmpp_2m, sample_euler, sample_euler_ancestral

# diffusers 0.42's Euler schedulers call np.array on a tensor in a way NumPy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

CONFIGS = Path(__file__).resolve().parents[1] / "weights" / "configs"


def official(name):
    return json.loads((CONFIGS / name / "scheduler" / "scheduler_config.json").read_text())


SD15 = official("stable-diffusion-v1-5")  # PNDM config: no timestep_spacing -> Euler linspace, DDIM leading
SD21 = official("stable-diffusion-2-1")  # DDIM, v_prediction
SDXL = official("stable-diffusion-xl-base-1.0")  # Euler, leading
TURBO = official("sdxl-turbo")  # Euler ancestral, trailing
ZERO_SNR = {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}

# DPMSolverMultistepScheduler's defaults are the configuration minunet implements: dpmsolver++, solver_order 2,
# midpoint, lower_order_final, final_sigmas_type "zero"
ORACLE = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
          "ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}
SAMPLER = {"euler": sample_euler, "euler_a": sample_euler_ancestral, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}
SHAPE = (2, 4, 8, 8)


def model_fn(x, t):
    """A deterministic stand-in for the UNet that depends on both x and t."""
    return 0.1 * x * torch.cos(t / 100) + torch.sin(x)


def assert_latents_close(ours, theirs):
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ---- the oracle: diffusers' pipelines' logic ----

def diffusers_timesteps(scheduler, num_steps, strength=None, denoising_start=None, denoising_end=None):
    """Timesteps a diffusers pipeline runs; sets the scheduler's begin index as the pipeline does."""
    scheduler.set_timesteps(num_steps)
    stub = SimpleNamespace(scheduler=scheduler)
    if strength is not None or denoising_start is not None:
        timesteps, _ = StableDiffusionXLImg2ImgPipeline.get_timesteps(stub, num_steps, strength, "cpu",
                                                                       denoising_start=denoising_start)
    else:
        timesteps = scheduler.timesteps
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
    if denoising_end is not None:  # inline in StableDiffusionXLPipeline.__call__ (8.1), so written out here
        T = scheduler.config.num_train_timesteps
        cutoff = int(round(T - denoising_end * T))
        timesteps = timesteps[:len([t for t in timesteps if t >= cutoff])]
    return timesteps


def diffusers_sample(sampler, config, num_steps, noise, generator, *, eta=0.0, init_latents=None,
                     scheduler=None, **window):
    """diffusers' denoising loop; `scheduler` overrides the one built from `config` (after set_timesteps)."""
    scheduler = scheduler or ORACLE[sampler].from_config(config)
    timesteps = diffusers_timesteps(scheduler, num_steps, **window)
    if window.get("denoising_start") is not None:
        latents = init_latents
    elif window.get("strength") is not None:
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(noise.shape[0]))
    else:
        latents = noise * scheduler.init_noise_sigma
    step_kwargs = {"eta": eta} if sampler == "ddim" else {}
    for t in timesteps:
        out = model_fn(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(out, t, latents, generator=generator, **step_kwargs).prev_sample
    return latents


def noise_and_generator(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=generator), generator


# ---- whole runs, text-to-image ----

CASES = {  # id: (sampler, config, sampler kwargs)
    "sd15-euler-linspace": ("euler", SD15, {}),
    "sd15-euler-leading": ("euler", {**SD15, "timestep_spacing": "leading"}, {}),
    "sd15-euler-trailing": ("euler", {**SD15, "timestep_spacing": "trailing"}, {}),
    "sd15-euler-linear-betas": ("euler", {**SD15, "beta_schedule": "linear"}, {}),
    "sd15-euler-sample": ("euler", {**SD15, "prediction_type": "sample"}, {}),
    "sd21-euler-v": ("euler", SD21, {}),
    "sdxl-euler": ("euler", SDXL, {}),
    "sdxl-euler-karras": ("euler", {**SDXL, "use_karras_sigmas": True}, {}),
    "sdxl-euler-log-linear": ("euler", {**SDXL, "interpolation_type": "log_linear"}, {}),
    "sdxl-euler-karras-log-linear": ("euler", {**SDXL, "use_karras_sigmas": True,
                                               "interpolation_type": "log_linear"}, {}),
    "sdxl-euler-zero-snr-eps": ("euler", {**SDXL, **ZERO_SNR}, {}),
    "sdxl-euler-zero-snr-v": ("euler", {**SDXL, **ZERO_SNR, "prediction_type": "v_prediction"}, {}),
    "trained-betas-euler": ("euler", {**SD15, "trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()}, {}),
    "turbo-ancestral": ("euler_a", TURBO, {}),
    "sdxl-ancestral-leading": ("euler_a", SDXL, {}),
    "sd15-ancestral-linspace": ("euler_a", SD15, {}),
    "sd21-ancestral-v": ("euler_a", SD21, {}),
    "turbo-ancestral-zero-snr-v": ("euler_a", {**TURBO, **ZERO_SNR, "prediction_type": "v_prediction"}, {}),
    "sd15-ddim-leading": ("ddim", SD15, {}),
    "sd15-ddim-linspace": ("ddim", {**SD15, "timestep_spacing": "linspace"}, {}),
    "sdxl-ddim-trailing": ("ddim", {**SDXL, "timestep_spacing": "trailing"}, {}),
    "sd21-ddim-v": ("ddim", SD21, {}),
    "sd15-ddim-eta1": ("ddim", SD15, {"eta": 1.0}),
    "sd21-ddim-v-eta0.5": ("ddim", SD21, {"eta": 0.5}),
    "sd21-ddim-zero-snr-v-eta0.3": ("ddim", {**SD21, **ZERO_SNR}, {"eta": 0.3}),
    "sd15-ddim-sample-clipped": ("ddim", {**SD15, "prediction_type": "sample", "clip_sample": True}, {}),
    "ddim-defaults": ("ddim", {}, {}),  # diffusers' DDIM defaults: linear betas, clip_sample, set_alpha_to_one
    "sd15-dpm-linspace": ("dpmpp_2m", SD15, {}),
    "sd15-dpm-leading": ("dpmpp_2m", {**SD15, "timestep_spacing": "leading"}, {}),
    "sd15-dpm-trailing": ("dpmpp_2m", {**SD15, "timestep_spacing": "trailing"}, {}),
    "sd15-dpm-karras": ("dpmpp_2m", {**SD15, "use_karras_sigmas": True}, {}),
    "sd21-dpm-v": ("dpmpp_2m", SD21, {}),
    "sd21-dpm-v-karras": ("dpmpp_2m", {**SD21, "use_karras_sigmas": True}, {}),
    "sdxl-dpm": ("dpmpp_2m", SDXL, {}),
    "sdxl-dpm-karras": ("dpmpp_2m", {**SDXL, "use_karras_sigmas": True}, {}),
    "turbo-dpm-trailing": ("dpmpp_2m", TURBO, {}),
    "sdxl-dpm-zero-snr-v": ("dpmpp_2m", {**SDXL, **ZERO_SNR, "prediction_type": "v_prediction"}, {}),
    "sd15-dpm-sample": ("dpmpp_2m", {**SD15, "prediction_type": "sample"}, {}),
}


def test_one_sampler_table():
    """The package, Pipeline and CLI read one table; every entry has its diffusers oracle here."""
    import minunet
    from minunet import cli
    from minunet.pipelines import image as pipeline

    assert set(SAMPLERS) == set(ORACLE) == set(SAMPLER)
    assert minunet.SAMPLERS is SAMPLERS and pipeline.SAMPLERS is SAMPLERS
    assert cli.build_parser()._subparsers._group_actions[0].choices["generate"]._option_string_actions[
        "--sampler"].choices == list(SAMPLERS)
    assert all(SAMPLERS[name].oracle == ORACLE[name].__name__ for name in SAMPLERS)


@pytest.mark.parametrize("num_steps", [1, 2, 10, 50])
@pytest.mark.parametrize("case", CASES)
def test_steps_match_diffusers(case, num_steps):
    sampler, config, _ = CASES[case]
    theirs = ORACLE[sampler].from_config(config)
    theirs.set_timesteps(num_steps)
    steps = Schedule.from_config(config).steps(num_steps, sampler)
    assert steps.timesteps.dtype == theirs.timesteps.dtype
    torch.testing.assert_close(steps.timesteps, theirs.timesteps, rtol=0, atol=0)
    if sampler == "ddim":
        torch.testing.assert_close(steps.alphas_cumprod, theirs.alphas_cumprod[theirs.timesteps], rtol=0, atol=0)
    elif sampler == "dpmpp_2m":
        torch.testing.assert_close(steps.sigmas, theirs.sigmas, rtol=0, atol=0)
        torch.testing.assert_close(steps.init_noise_sigma, torch.tensor(theirs.init_noise_sigma), rtol=0, atol=0)
    else:  # log_linear: diffusers appends a final 0 that no step reaches
        torch.testing.assert_close(steps.sigmas, theirs.sigmas[:num_steps + 1], rtol=0, atol=0)
        torch.testing.assert_close(steps.init_noise_sigma, theirs.init_noise_sigma, rtol=0, atol=0)


@pytest.mark.parametrize("num_steps", [1, 2, 10, 50])
@pytest.mark.parametrize("case", CASES)
def test_sampling_matches_diffusers(case, num_steps):
    sampler, config, kwargs = CASES[case]
    noise, generator = noise_and_generator()
    theirs = diffusers_sample(sampler, config, num_steps, noise, generator, **kwargs)
    noise, generator = noise_and_generator()
    ours = SAMPLER[sampler](model_fn, noise, Schedule.from_config(config), num_steps, generator=generator, **kwargs)
    assert_latents_close(ours, theirs)


@pytest.mark.parametrize("num_steps", [2, 10])
def test_ancestral_with_karras_sigmas_steps_as_diffusers_on_those_sigmas(num_steps):
    """Our Euler ancestral takes Euler's sigmas (diffusers' ancestral scheduler ignores use_karras_sigmas):
    the oracle is diffusers' ancestral step run on diffusers' Euler Karras schedule."""
    config = {**SDXL, "use_karras_sigmas": True}
    karras = EulerDiscreteScheduler.from_config(config)
    karras.set_timesteps(num_steps)
    oracle = EulerAncestralDiscreteScheduler.from_config(config)
    oracle.set_timesteps = lambda n: None  # keep the Karras schedule set below
    oracle.timesteps, oracle.sigmas = karras.timesteps, karras.sigmas
    noise, generator = noise_and_generator()
    theirs = diffusers_sample("euler_a", config, num_steps, noise, generator, scheduler=oracle)
    noise, generator = noise_and_generator()
    ours = sample_euler_ancestral(model_fn, noise, Schedule.from_config(config), num_steps, generator=generator)
    assert_latents_close(ours, theirs)


def test_trailing_gives_num_steps_timesteps_where_diffusers_gives_one_more():
    """Documented deviation: diffusers' float np.arange yields 62 'trailing' timesteps for 61 steps (the
    last is -1); ours are its first 61."""
    theirs = EulerDiscreteScheduler.from_config(TURBO)
    theirs.set_timesteps(61)
    ours = Schedule.from_config(TURBO).timesteps(61, "euler_a")
    assert len(theirs.timesteps) == 62 and theirs.timesteps[-1] == -1
    torch.testing.assert_close(ours, theirs.timesteps[:61], rtol=0, atol=0)


def test_callback_sees_every_step():
    seen = []
    noise, _ = noise_and_generator()
    x = sample_euler(model_fn, noise, Schedule.from_config(SDXL), 5, callback=lambda i, t, x: seen.append((i, t, x)))
    assert [i for i, _, _ in seen] == list(range(5))
    torch.testing.assert_close(torch.stack([t for _, t, _ in seen]), Schedule.from_config(SDXL).timesteps(5, "euler"))
    assert seen[-1][2] is x


@pytest.mark.parametrize("sampler,config", [("euler", SDXL), ("dpmpp_2m", SDXL), ("ddim", SD21)])
def test_callback_latents_are_diffusers_latents_and_its_return_replaces_them(sampler, config):
    """callback(i, t, latents) sees what diffusers' loop holds after step i (Euler's x, DPM's and DDIM's x_t);
    a tensor it returns replaces the latents, as diffusers' pipelines overwrite `latents` (inpainting's blend)."""
    scheduler = ORACLE[sampler].from_config(config)
    scheduler.set_timesteps(6)
    noise, _ = noise_and_generator()
    latents, theirs = noise * scheduler.init_noise_sigma, []
    for i, t in enumerate(scheduler.timesteps):
        latents = scheduler.step(model_fn(scheduler.scale_model_input(latents, t), t), t, latents).prev_sample
        latents = latents * 0.5 if i == 2 else latents  # the callback's replacement, written into diffusers' loop
        theirs.append(latents)
    seen = []

    def callback(i, t, x):
        seen.append(x if i != 2 else x * 0.5)
        return seen[-1] if i == 2 else None
    ours = SAMPLER[sampler](model_fn, noise, Schedule.from_config(config), 6, callback=callback)
    for a, b in zip(seen, theirs):
        assert_latents_close(a, b)
    assert_latents_close(ours, theirs[-1])


# ---- per-sample generators ----

@pytest.mark.parametrize("sampler, config, kw", [("euler_a", TURBO, {}), ("ddim", SD15, {"eta": 0.7})])
def test_generator_list_draws_per_sample_as_diffusers(sampler, config, kw):
    """A list of generators: sample i's noise comes from generator i alone, as diffusers' randn_tensor draws it,
    so each sample equals a batch-of-one run seeded with its own generator."""
    from diffusers.utils.torch_utils import randn_tensor
    from minunet.noise import randn

    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    torch.testing.assert_close(randn(SHAPE, gens()), randn_tensor(SHAPE, generator=gens()), rtol=0, atol=0)
    noise = randn(SHAPE, gens())
    schedule = Schedule.from_config(config)
    ours = SAMPLER[sampler](model_fn, noise, schedule, 6, generator=gens(), **kw)
    theirs = diffusers_sample(sampler, config, 6, noise, gens(), **kw)
    assert_latents_close(ours, theirs)
    for i, g in enumerate(gens()):
        alone = SAMPLER[sampler](model_fn, noise[i:i + 1], schedule, 6, generator=g, **kw)
        assert_latents_close(ours[i:i + 1], alone)
    one = SAMPLER[sampler](model_fn, noise, schedule, 6, generator=torch.Generator().manual_seed(3), **kw)
    assert (one[1] - ours[1]).abs().max() > 1e-3  # a single generator draws the batch as one tensor


def test_generator_list_of_the_wrong_length_raises():
    from minunet.noise import randn

    with pytest.raises(ValueError, match="a list of 3 generators was given for a batch of 2 samples"):
        randn((2, 4, 8, 8), [torch.Generator() for _ in range(3)])


# ---- partial schedules: img2img strength, SDXL base (denoising_end) and refiner (denoising_start) ----

WINDOWS = {
    "strength0.3": {"strength": 0.3},
    "strength0.55": {"strength": 0.55},
    "strength0.75": {"strength": 0.75},
    "strength1": {"strength": 1.0},
    "strength0.05": {"strength": 0.05},  # no step at all for fewer than 20 steps
    "start0.8": {"denoising_start": 0.8},
    "start0.5": {"denoising_start": 0.5},
    "end0.8": {"denoising_end": 0.8},
    "end0.35": {"denoising_end": 0.35},
    "start0.3-end0.7": {"denoising_start": 0.3, "denoising_end": 0.7},
}
PARTIAL_CONFIGS = {"sd15": SD15, "sdxl": SDXL, "sdxl-karras": {**SDXL, "use_karras_sigmas": True}, "turbo": TURBO}


PARTIAL_CASES = [(sampler, config) for sampler in ("euler", "ddim", "dpmpp_2m") for config in PARTIAL_CONFIGS
                 if (sampler, config) != ("ddim", "sdxl-karras")]  # DDIM rejects Karras sigmas (tested below)


@pytest.mark.parametrize("num_steps", [7, 30])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("sampler,config", PARTIAL_CASES)
def test_partial_timesteps_match_diffusers_pipelines(sampler, config, window, num_steps):
    config, window = PARTIAL_CONFIGS[config], WINDOWS[window]
    scheduler = ORACLE[sampler].from_config(config)
    theirs = diffusers_timesteps(scheduler, num_steps, **window)
    schedule = Schedule.from_config(config)
    if len(theirs) == 0:
        with pytest.raises(ValueError, match="no steps left"):
            schedule.steps(num_steps, sampler, **window)
        return
    steps = schedule.steps(num_steps, sampler, **window)
    torch.testing.assert_close(steps.timesteps, theirs, rtol=0, atol=0)
    if sampler != "ddim":  # diffusers' step index starts at the begin index the pipeline set
        begin = scheduler.begin_index
        torch.testing.assert_close(steps.sigmas, scheduler.sigmas[begin:begin + len(theirs) + 1], rtol=0, atol=0)
    if "strength" in window:  # the SD 1.x img2img pipeline's rounding is the SDXL one's
        sd_timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler),
                                                                       num_steps, window["strength"], "cpu")
        torch.testing.assert_close(steps.timesteps, sd_timesteps, rtol=0, atol=0)


IMG2IMG = {  # id: (sampler, config, kwargs)
    "sd15-euler": ("euler", SD15, {}),
    "turbo-ancestral": ("euler_a", TURBO, {}),
    "sd15-ddim-eta0.5": ("ddim", SD15, {"eta": 0.5}),
    "sd21-ddim-v": ("ddim", SD21, {}),
    "sd15-dpm": ("dpmpp_2m", SD15, {}),
    "sdxl-dpm-karras": ("dpmpp_2m", {**SDXL, "use_karras_sigmas": True}, {}),
    "sd21-dpm-v": ("dpmpp_2m", SD21, {}),
}


@pytest.mark.parametrize("strength", [0.35, 0.8, 1.0])
@pytest.mark.parametrize("num_steps", [4, 50])
@pytest.mark.parametrize("case", IMG2IMG)
def test_img2img_matches_diffusers(case, num_steps, strength):
    sampler, config, kwargs = IMG2IMG[case]
    init_latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise, generator = noise_and_generator()
    theirs = diffusers_sample(sampler, config, num_steps, noise, generator, init_latents=init_latents,
                              strength=strength, **kwargs)
    noise, generator = noise_and_generator()
    ours = SAMPLER[sampler](model_fn, noise, Schedule.from_config(config), num_steps, init_latents=init_latents,
                            strength=strength, generator=generator, **kwargs)
    assert_latents_close(ours, theirs)


@pytest.mark.parametrize("num_steps", [10, 40])
@pytest.mark.parametrize("sampler,config", [("euler", SDXL), ("euler_a", TURBO), ("ddim", SD21), ("dpmpp_2m", SDXL),
                                            ("dpmpp_2m", {**SDXL, "use_karras_sigmas": True})])
def test_base_to_refiner_hand_over_matches_diffusers(sampler, config, num_steps):
    noise, generator = noise_and_generator()
    base = diffusers_sample(sampler, config, num_steps, noise, generator, denoising_end=0.8)
    theirs = diffusers_sample(sampler, config, num_steps, None, generator, init_latents=base, denoising_start=0.8)
    noise, generator = noise_and_generator()
    schedule = Schedule.from_config(config)
    ours = SAMPLER[sampler](model_fn, noise, schedule, num_steps, denoising_end=0.8, generator=generator)
    assert_latents_close(ours, base)
    ours = SAMPLER[sampler](model_fn, None, schedule, num_steps, init_latents=ours, denoising_start=0.8,
                            generator=generator)
    assert_latents_close(ours, theirs)


# ---- configs and errors ----

def test_official_configs_translate():
    schedules = {p.parts[-3]: Schedule.from_config(json.loads(p.read_text()))
                 for p in CONFIGS.glob("*/scheduler/scheduler_config.json")}
    assert len(schedules) >= 5
    assert schedules["stable-diffusion-v1-5"].timestep_spacing is None  # the sampler's default then
    assert schedules["stable-diffusion-2-1"].prediction_type == "v_prediction"
    assert schedules["sdxl-turbo"].timestep_spacing == "trailing"
    assert schedules["stable-diffusion-xl-base-1.0"].steps_offset == 1


@pytest.mark.parametrize("key,value", [
    ("prediction_type", "x0"), ("timestep_spacing", "uniform"), ("beta_schedule", "squaredcos_cap_v2"),
    ("interpolation_type", "cubic"), ("thresholding", True), ("use_exponential_sigmas", True),
    ("use_beta_sigmas", True), ("timestep_type", "continuous"), ("final_sigmas_type", "sigma_min"),
    ("sigma_min", 0.1),
])
def test_unsupported_config_value_raises(key, value):
    with pytest.raises(ValueError, match=f"{key}={value!r} is not supported"):
        Schedule.from_config({**SDXL, key: value})


def test_trained_betas_length_raises():
    with pytest.raises(ValueError, match="trained_betas has 10 values"):
        Schedule.from_config({**SD15, "trained_betas": [0.01] * 10})


SD15_SCHEDULE = Schedule.from_config(SD15)


@pytest.mark.parametrize("call,match", [
    (lambda: SD15_SCHEDULE.steps(0, "euler"), "num_steps=0"),
    (lambda: SD15_SCHEDULE.steps(1001, "ddim"), "num_steps=1001"),
    (lambda: SD15_SCHEDULE.steps(2.0, "euler"), "num_steps=2.0"),
    (lambda: SD15_SCHEDULE.steps(10, "heun"), "sampler='heun' is not supported"),
    (lambda: SD15_SCHEDULE.steps(10, "euler", strength=0.0), r"strength=0.0 must be in \(0, 1\]"),
    (lambda: SD15_SCHEDULE.steps(10, "euler", strength=1.5), r"strength=1.5 must be in \(0, 1\]"),
    (lambda: SD15_SCHEDULE.steps(10, "ddim", strength=0.05), "no steps left"),
    (lambda: SD15_SCHEDULE.steps(10, "euler", denoising_start=1.0), "denoising_start=1.0 must be a fraction"),
    (lambda: SD15_SCHEDULE.steps(10, "euler", denoising_end=0.0), "denoising_end=0.0 must be a fraction"),
    (lambda: SD15_SCHEDULE.steps(10, "euler", denoising_start=0.8, denoising_end=0.8), "must be below"),
    (lambda: SD15_SCHEDULE.steps(10, "euler", strength=0.5, denoising_start=0.5), "not both"),
    (lambda: Schedule.from_config({**SDXL, "use_karras_sigmas": True}).steps(10, "ddim"), "use_karras_sigmas=False"),
    (lambda: Schedule(interpolation_type="log_linear").steps(10, "ddim"), "interpolation_type='linear'"),
    (lambda: Schedule(steps_offset=1).steps(1000, "ddim"), "reach timestep 1000"),
    (lambda: Schedule.from_config({**SD15, **ZERO_SNR}).steps(10, "ddim"), "zero-SNR"),
])
def test_bad_schedule_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


X = torch.zeros(SHAPE)


@pytest.mark.parametrize("kwargs,match", [
    ({"noise": X, "strength": 0.5}, "strength .* needs init_latents"),
    ({"noise": None, "init_latents": X, "strength": 0.5}, "strength .* needs init_latents"),
    ({"noise": X, "init_latents": X}, "init_latents are used only with"),
    ({"noise": X, "denoising_start": 0.5}, "denoising_start needs init_latents"),
    ({"noise": None}, "noise is needed"),
    ({"noise": X, "eta": -0.1}, "eta=-0.1 must be >= 0"),
])
def test_bad_sampler_arguments_raise(kwargs, match):
    sampler = sample_ddim if "eta" in kwargs else sample_euler
    with pytest.raises(ValueError, match=match):
        sampler(model_fn, schedule=SD15_SCHEDULE, num_steps=10, **kwargs)
