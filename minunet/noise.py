"""Gaussian draws as diffusers' `randn_tensor` makes them, so that a seed gives the same image in both.

A generator draws on its own device (a CPU generator on the CPU, the default) and the tensor then moves to
`device`; a list of generators draws each sample (row 0 of the batch) from its own generator, so sample i depends on
generator i alone; a list of one is that one generator.
"""
import torch


def randn(shape, generator=None, device=None, dtype=torch.float32):
    """(B, ...) unit Gaussian on `device` (default: the generator's, else the CPU)."""
    if isinstance(generator, (list, tuple)):
        check_generators(generator, shape[0])
        if len(generator) == 1:
            generator = generator[0]
        else:
            return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])
    source = generator.device if generator is not None else (device or torch.device("cpu"))
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device or source)


def check_generators(generator, batch):
    """A list of generators needs one per sample of the batch."""
    if isinstance(generator, (list, tuple)) and len(generator) != batch:
        raise ValueError(f"a list of {len(generator)} generators was given for a batch of {batch} samples: pass one "
                         f"generator per sample (prompts x num_images_per_prompt), or a single generator")


def repeat_to(x, batch, name):
    """(n, ...) -> (batch, ...) by repeating the whole batch, when n divides batch (diffusers' rule)."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] > batch or batch % x.shape[0]:
        raise ValueError(f"{name} has a batch of {x.shape[0]}, which cannot be repeated to the {batch} samples "
                         f"asked for (prompts x num_images_per_prompt)")
    return x.repeat(batch // x.shape[0], *[1] * (x.ndim - 1))
