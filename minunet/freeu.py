"""FreeU (Si et al., CVPR 2024, arXiv 2309.11497): re-weight the decoder's two inputs at inference time.

At an early decoder resnet, whose input is `torch.cat([h, hs], dim=1)` (backbone h coming up, skip hs from the
encoder), FreeU amplifies the first half of h's channels by b and scales the lowest spatial frequencies of hs by s:

    out = cat([h[:, :C//2] * factor(b), h[:, C//2:], fourier_filter(hs, 1, s)], dim=1)

version 1: factor = b.  version 2 (paper eqs. 3-4): factor = 1 + (b - 1) * m, m = channel mean of h min-max
normalised to [0, 1] per sample.  Which resnets get (b1, s1) or (b2, s2) is the `mapping` (see FreeU.stage).

This module is the feature as a user sees it: the FreeU options, their stage rule and the published presets.
The maths sits next to the blocks that call it (minunet/blocks/freeu.py: Stage, decoder_input, freeu_concat, the
FFT-free fourier_filter); the fused GPU kernel is minunet.kernels.fused_decoder_input. A model works its FreeU out
into a per-resnet plan once (model.enable_freeu(freeu) -> FreeU.plan); each up block hands its resnets' Stage to
decoder_input where it concatenates.
"""
import math
import numbers
from dataclasses import dataclass

# the maths, re-exported: minunet.freeu.fourier_filter / freeu_concat / Stage / decoder_input as before
from .blocks.freeu import Stage, decoder_input, fourier_filter, freeu_concat  # noqa: F401

MAPPINGS = ("official", "diffusers")


@dataclass(frozen=True, kw_only=True)
class FreeU:
    """FreeU factors: s1, s2 scale the skips' low frequencies; b1, b2 amplify the backbone (stage 1, stage 2).

    mapping "official": stage by the backbone width entering the resnet: 4 x model channels -> 1, 2 x -> 2
    (official code, ComfyUI, Forge, Fooocus, A1111).  "diffusers": every resnet of up block 0 -> 1, of up block 1
    -> 2 (diffusers' enable_freeu, InvokeAI).  Any factor, 0.0 included, is applied as given.
    """
    s1: float
    s2: float
    b1: float
    b2: float
    mapping: str = "official"
    version: int = 1

    def __post_init__(self):
        for f in ("s1", "s2", "b1", "b2"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"FreeU: {f} must be a finite number, got {value!r}")
            object.__setattr__(self, f, float(value))
        if self.mapping not in MAPPINGS:
            raise ValueError(f"FreeU: mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        if self.version not in (1, 2):
            raise ValueError(f"FreeU: version must be 1 (plain b) or 2 (structure-adaptive b), got {self.version!r}")

    @classmethod
    def preset(cls, name):
        """The published factors for `name`, with the version and mapping they were tuned for (list_presets())."""
        if name not in PRESETS:
            raise KeyError(f"FreeU: no preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[name][0]

    def stage(self, up_block, channels, model_channels):
        """1, 2 or None for a resnet of up block `up_block` whose backbone input has `channels` channels."""
        if self.mapping == "diffusers":
            return {0: 1, 1: 2}.get(up_block)
        return {4 * model_channels: 1, 2 * model_channels: 2}.get(channels)

    def at(self, stage):
        """The Stage (b, s, version) applied by stage 1 or 2; None for None."""
        if stage is None:
            return None
        return Stage(self.b1, self.s1, self.version) if stage == 1 else Stage(self.b2, self.s2, self.version)

    @classmethod
    def from_arguments(cls, s1, s2=None, b1=None, b2=None, *, mapping="official", version=1):
        """enable_freeu's arguments as the pipelines take them: a FreeU, or diffusers' factors s1, s2, b1, b2
        (mapping="diffusers", version=1 reproduces diffusers' enable_freeu exactly). Every factor is applied as
        given, 0.0 included."""
        if isinstance(s1, FreeU):
            if (s2, b1, b2) != (None, None, None):
                raise TypeError("enable_freeu: pass either a FreeU or the factors s1, s2, b1, b2, not both")
            return s1
        return cls(s1=s1, s2=s2, b1=b1, b2=b2, mapping=mapping, version=version)

    def plan(self, widths, model_channels):
        """What each decoder resnet applies: widths[i][j] is the backbone width entering resnet j of up block i;
        returns the same nesting of Stage | None (the table the README prints)."""
        return [[self.at(self.stage(i, c, model_channels)) for c in block] for i, block in enumerate(widths)]


# Published factors, with the math (version) and stage rule (mapping) each was tuned for.
PRESETS = {
    "sd14": (FreeU(b1=1.3, b2=1.4, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sd14-v1": (FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2), "official README, first release (V1 era)"),
    "sd15": (FreeU(b1=1.5, b2=1.6, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sd21": (FreeU(b1=1.4, b2=1.6, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sd21-v1": (FreeU(b1=1.1, b2=1.2, s1=0.9, s2=0.2), "official README, first release (V1 era)"),
    "sdxl": (FreeU(b1=1.3, b2=1.4, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sdxl-sweep": (FreeU(b1=1.1, b2=1.2, s1=0.6, s2=0.4, mapping="diffusers"),
                   "community sweep quoted by the diffusers docs"),
    "video": (FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2), "FreeU video code (ModelScope / zeroscope)"),
    "sd15-diffusers": (FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2, mapping="diffusers"), "diffusers guide, SD 1.4 / 1.5"),
    "sd21-diffusers": (FreeU(b1=1.1, b2=1.2, s1=0.9, s2=0.2, mapping="diffusers"), "diffusers guide, SD 2.1"),
}


def list_presets():
    """The preset table as Markdown (README.md carries a copy; a test keeps the two equal)."""
    rows = ["| preset | b1 | b2 | s1 | s2 | version | mapping | source |", "|---|---|---|---|---|---|---|---|"]
    for name, (f, source) in PRESETS.items():
        rows.append(f"| `{name}` | {f.b1} | {f.b2} | {f.s1} | {f.s2} | {f.version} | {f.mapping} | {source} |")
    return "\n".join(rows)
