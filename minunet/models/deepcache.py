"""DeepCache (Ma, Fang & Wang 2023, arXiv 2312.00858): between full UNet steps, run only the shallow branch.

A UNet splits at a branch into a shallow part (conv_in, the encoder units above the branch, the decoder units from
its mirror on, conv_out) and a deep part (the rest of the encoder, the middle, the rest of the decoder). On a full
step the whole UNet runs and DeepCache keeps the deep part's output, the features entering the first shallow
decoder unit; on the steps between, only the shallow part runs, on those kept features and the shallow encoder's
fresh skips (the only skips the shallow decoder reads).

    cache_branch_id b   the branch: encoder level b // 3, unit b % 3 of it (units: resnet [+ transformer] 0, 1,
                        then the downsampler, for the two layers per level of every SD UNet). 0 keeps the least:
                        conv_in, the last decoder layer and conv_out run between full steps
    cache_interval N    "uniform": the full UNet runs on steps 0, N, 2N, ... of a run; N = 1 is every step

Same meaning as the DeepCache package's DeepCacheSDHelper (skip_mode "uniform") on diffusers' pipelines, which
keeps every skipped module's last output instead of one tensor: the shallow path reads the same values. A step is
one UNet call since `start()`, which minunet's pipelines call before each run (their samplers call the UNet once
a step); the helper counts timesteps from the first one it saw after `enable()`.
DeepCache attaches from outside: `enable_deepcache(unet, ...)` sets `unet.deepcache`, which the UNet's forward asks
whether to run its deep part (full_step) and takes the deep part's output from (kept); `disable_deepcache(unet)`
sets it back to None.
"""
UNITS = 3  # DeepCache numbers branches 3 to a level: layer 0, layer 1, downsampler


class DeepCache:
    def __init__(self, cache_interval=3, cache_branch_id=0):
        for name, value, low in (("cache_interval", cache_interval, 1), ("cache_branch_id", cache_branch_id, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DeepCache: {name} must be an integer >= {low}, got {value!r}")
        self.cache_interval, self.cache_branch_id = cache_interval, cache_branch_id
        self.branch = divmod(cache_branch_id, UNITS)   # (level, unit)
        self.start()

    def __repr__(self):
        return f"DeepCache(cache_interval={self.cache_interval}, cache_branch_id={self.cache_branch_id})"

    def start(self):
        """A new run: the next UNet call is its step 0, a full step."""
        self.step, self.full, self.features, self.key = 0, True, None, None

    def full_step(self, h):
        """Whether this UNet call runs the deep part (steps 0, N, 2N, ... of the run); counts the call. h: the
        shallow encoder's output, whose batch, size and dtype the kept features must have."""
        key = (h.shape, h.dtype, h.device)
        if key != self.key:       # another batch, size or dtype than the kept features': a new run
            self.start()
            self.key = key
        self.full = self.step % self.cache_interval == 0
        self.step += 1
        return self.full

    def kept(self, h):
        """The deep part's output: h itself on a full step (and kept), the kept features between."""
        if self.full:
            self.features = h
        return self.features


def cut(levels, layers, branch):
    """(encoder units, decoder units) above the branch (level, unit) of a UNet with `levels` levels of `layers`
    layers: the shallow encoder is encoder units 0 .. enc-1, the shallow decoder decoder units dec on (the encoder
    has layers + 1 units a level: its layers, then the downsampler; the decoder layers + 2: its layers, then the
    upsampler)."""
    level, unit = branch
    return level * (layers + 1) + unit, (levels - 1 - level) * (layers + 2) + layers - unit


def enable_deepcache(unet, cache_interval=3, cache_branch_id=0):
    """DeepCache on `unet` (an image or video UNet) -> the DeepCache; replaces any earlier one."""
    if not hasattr(unet, "deepcache"):
        raise TypeError(f"DeepCache: a {type(unet).__name__} has no branch to cache at (the image and video UNets do)")
    cache = DeepCache(cache_interval, cache_branch_id)
    levels, layers = len(unet.down_blocks), unet.config.layers_per_block
    level, unit = cache.branch
    if level >= levels or unit > layers:
        top = (levels - 1) * UNITS + min(layers, UNITS - 1)
        raise ValueError(f"DeepCache: cache_branch_id={cache_branch_id} is level {level}, unit {unit}; this UNet "
                         f"has {levels} levels of {layers} layers: use 0 .. {top}")
    cache.cut = cut(levels, layers, cache.branch)
    unet.deepcache = cache
    return cache


def disable_deepcache(unet):
    unet.deepcache = None


def start_run(unet):
    """Before a sampling run: step 0 is a full step (a no-op without DeepCache; `unet` may be torch.compile'd)."""
    cache = getattr(getattr(unet, "_orig_mod", unet), "deepcache", None)
    if cache is not None:
        cache.start()
