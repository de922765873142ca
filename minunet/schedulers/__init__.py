"""Noise schedules and samplers (Euler, Euler ancestral, DDIM) that reproduce diffusers' schedulers.

schedule.py    Schedule (from a diffusers scheduler_config.json) -> SigmaSteps / AlphaSteps for one run
prediction.py  epsilon / v / sample parameterisation
samplers.py    sample_euler, sample_euler_ancestral, sample_ddim: plain functions, no step() state
"""
from .samplers import sample_ddim, sample_euler, sample_euler_ancestral
from .schedule import SAMPLERS, AlphaSteps, Schedule, SigmaSteps

__all__ = ["Schedule", "SigmaSteps", "AlphaSteps", "SAMPLERS",
           "sample_euler", "sample_euler_ancestral", "sample_ddim"]
