"""Noise schedules and samplers (Euler, Euler ancestral, DDIM, DPM-Solver++ 2M) that reproduce diffusers' schedulers.

schedule.py    Schedule (from a diffusers scheduler_config.json) -> SigmaSteps / AlphaSteps for one run
prediction.py  epsilon / v / sample parameterisation; Denoiser: raw UNet output -> x0 at a noise level
guidance.py    classifier-free guidance (with guidance_rescale) around a model function
samplers.py    the loops over a denoiser, the one SAMPLERS table, and sample_* as plain functions (no step() state)
"""
from .guidance import cfg_combine, guided
from .prediction import AlphaDenoiser, Denoiser
from .samplers import (SAMPLERS, Sampler, sample, sample_ddim, sample_dpmpp_2m, sample_euler,
                       sample_euler_ancestral)
from .schedule import AlphaSteps, Schedule, SigmaSteps

__all__ = ["Schedule", "SigmaSteps", "AlphaSteps", "SAMPLERS", "Sampler", "Denoiser", "AlphaDenoiser", "sample",
           "sample_euler", "sample_euler_ancestral", "sample_ddim", "sample_dpmpp_2m", "cfg_combine", "guided"]
