"""What the image, video and upscale pipelines share: the FreeU switches, compile and device (UNetPipeline), the Hub
fetch of a pipeline folder, the progress bar that runs the step callbacks, and the sampler and output-type checks.
(The argument checks of Pipeline.__call__ are pipelines/checks.py.)"""
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..freeu import FreeU
from ..loading.io import hub_snapshot
from ..models.deepcache import disable_deepcache, enable_deepcache
from ..schedulers import SAMPLERS


class UNetPipeline:
    """enable_freeu / disable_freeu, enable_deepcache / disable_deepcache, compile, device for a pipeline whose
    denoiser is `self.unet`."""

    def enable_freeu(self, s1, s2=None, b1=None, b2=None, *, mapping="official", version=1):
        """FreeU in the UNet's decoder: a FreeU (e.g. FreeU.preset("sdxl")), or diffusers' factors s1, s2, b1, b2
        (mapping="diffusers", version=1 is diffusers' enable_freeu exactly). See minunet/freeu.py."""
        self.unet.enable_freeu(FreeU.from_arguments(s1, s2, b1, b2, mapping=mapping, version=version))
        return self

    def disable_freeu(self):
        self.unet.disable_freeu()
        return self

    def enable_deepcache(self, cache_interval=3, cache_branch_id=0):
        """DeepCache (models/deepcache.py): the full UNet every `cache_interval` steps, only its shallow branch above
        `cache_branch_id` between them, on the deep features kept from the last full step. -> the DeepCache."""
        return enable_deepcache(unet_module(self.unet), cache_interval, cache_branch_id)

    def disable_deepcache(self):
        disable_deepcache(unet_module(self.unet))
        return self

    def compile(self, **options):
        """torch.compile the UNet; the same as `pipe.unet = torch.compile(pipe.unet, **options)`, which also works
        (the pipeline calls whatever `pipe.unet` is at call time)."""
        self.unet = torch.compile(self.unet, **options)
        return self

    @property
    def device(self):
        return self.unet.device


def unet_module(unet):
    """The UNet module itself, also under torch.compile (whose wrapper holds it as `_orig_mod`)."""
    return getattr(unet, "_orig_mod", unet)


def fetch_pipeline(repo_id, variant, revision=None):
    """A pipeline repo's JSON, text and (variant) safetensors files from the Hub -> its local folder (offline:
    the cache, else the one Hub message of loading.io.hub_failure)."""
    weights = f"*.{variant}.safetensors" if variant else "*.safetensors"
    return hub_snapshot(repo_id, ["*.json", "*.txt", weights], revision)


@contextmanager
def progress(total, enabled, callbacks, desc="sampling"):
    """The sampler's callback: a progress bar step, then each of `callbacks` (i, t, latents) in order (None ones
    skipped); a tensor one returns replaces the latents for the next and is returned (None: unchanged)."""
    from tqdm import tqdm

    with tqdm(total=total, disable=not enabled, desc=desc, leave=False) as bar:
        def step(i, t, x):
            bar.update(1)
            changed = None
            for callback in callbacks:
                out = None if callback is None else callback(i, t, x)
                if out is not None:
                    x = changed = out
            return changed
        yield step


def check_sampler(sampler):
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler '{sampler}' is not one of {tuple(SAMPLERS)}")


def check_output_type(output_type, allowed):
    if output_type not in allowed:
        raise ValueError(f"output_type {output_type!r} is not one of {', '.join(map(repr, allowed))}")
