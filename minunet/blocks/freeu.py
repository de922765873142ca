"""FreeU where the decoder concatenates (the maths; the options, stage rule and presets are minunet/freeu.py).

An up block hands each resnet's Stage (or None) to decoder_input, which returns the resnet's input
`cat([h, hs], 1)` with FreeU applied: the first half of the backbone h's channels amplified by b (version 1:
factor b; version 2: 1 + (b - 1) * m, m the channel mean of h min-max normalised per sample), the skip hs's lowest
spatial frequencies scaled by s (fourier_filter: the reference's FFT mask as the real linear map it is).
freeu_concat is the pure-torch path; on CUDA inference fused_freeu_concat runs the Triton kernel
(minunet.kernels.fused_decoder_input) with the same contract. A model holds its plan, [up block][resnet] ->
Stage | None, set by FreeUSwitch.enable_freeu from a minunet.FreeU.
"""
import functools
import math
import operator
from dataclasses import dataclass

import torch

from .. import kernels


@dataclass(frozen=True)
class Stage:
    """FreeU at one decoder resnet: backbone's first half amplified by b (version 1 or 2), skip's low frequencies
    scaled by s."""
    b: float
    s: float
    version: int = 1


def decoder_input(h, hs, stage):
    """The input of one decoder resnet: cat([h, hs], 1), with FreeU applied when `stage` is a Stage.
    (B, C, H, W), (B, C_skip, H, W) -> (B, C + C_skip, H, W)."""
    if stage is None:
        return torch.cat([h, hs], dim=1)
    # the fused kernel (fp32 maths, no backward) serves CUDA inference; the torch path everything else
    grad = torch.is_grad_enabled() and (h.requires_grad or hs.requires_grad)
    if h.is_cuda and h.dtype != torch.float64 and kernels.available() and not grad:
        return fused_freeu_concat(h, hs, b=stage.b, s=stage.s, version=stage.version)
    return freeu_concat(h, hs, b=stage.b, s=stage.s, version=stage.version)


class FreeUSwitch:
    """enable_freeu(freeu) / disable_freeu() for a model whose up blocks read `self.freeu_plan`: the plan is worked
    out once, when FreeU is switched; a model with its own stage rule overrides `_freeu_plan`."""
    freeu = None       # the minunet.FreeU in effect, or None
    freeu_plan = None  # [up block][resnet] -> Stage | None, what each decoder resnet applies

    def enable_freeu(self, freeu):
        """Turn FreeU on in the decoder with `freeu`, a minunet.FreeU (factors, stage mapping, version), e.g.
        FreeU.preset("sdxl"); the pipelines' enable_freeu also takes diffusers' (s1, s2, b1, b2)."""
        if not callable(getattr(freeu, "plan", None)):
            raise TypeError(f"enable_freeu takes a FreeU (minunet.FreeU), got {type(freeu).__name__}; "
                            "disable_freeu() turns it off")
        self.freeu_plan = self._freeu_plan(freeu)
        self.freeu = freeu
        return self

    def disable_freeu(self):
        self.freeu = self.freeu_plan = None
        return self

    def _freeu_plan(self, freeu):
        return freeu.plan(self.decoder_widths(), self.config.block_out_channels[0])


def freeu_concat(h, hs, *, b, s, version=1):
    """Pure-torch FreeU decoder input: (B, C, H, W), (B, C_skip, H, W) -> (B, C + C_skip, H, W). Out of place."""
    half = h.shape[1] // 2
    factor = b if version == 1 else 1 + (b - 1) * structure_map(h)   # float, or (B, 1, H, W) in fp32
    scaled = (h[:, :half] * factor).to(h.dtype)                      # fp16 x fp32 map multiplies in fp32
    return torch.cat([scaled, h[:, half:], fourier_filter(hs, 1, s)], dim=1)


def fused_freeu_concat(h, hs, *, b, s, version=1):
    """freeu_concat through the Triton kernel (minunet.kernels); version 2's map from the kernel's channel mean."""
    weight = normalise_map(kernels.channel_mean(h)) if version == 2 else None
    return kernels.fused_decoder_input(h, hs, b=b, s=s, weight=weight)


def structure_map(h):
    """Version 2's per-pixel weight: channel mean of h, min-max normalised per sample. (B, C, H, W) -> (B, 1, H, W)."""
    acc = torch.promote_types(h.dtype, torch.float32)                # FreeU accumulates in fp32
    return normalise_map(h.mean(dim=1, keepdim=True, dtype=acc))


def normalise_map(m):
    """(B, 1, H, W) channel-mean map -> (m - min) / (max - min) per sample, in [0, 1]."""
    lo = m.amin(dim=(2, 3), keepdim=True)
    span = m.amax(dim=(2, 3), keepdim=True) - lo
    # The public code divides by (max - min) with no epsilon, so a constant map (a 1 x 1 latent, a constant
    # feature) gives 0/0 = NaN. A constant map has no structure to follow: take m = 0 there (factor 1, backbone
    # unchanged), the eps -> 0 limit of adding an epsilon; every other map is left exactly as the public code has it.
    return (m - lo) / torch.where(span > 0, span, torch.ones_like(span))


def fourier_filter(x, threshold, scale):
    """Scale the centred (2t x 2t) block of x's 2-D spectrum by `scale`: diffusers' / the official `fourier_filter`
    (fftn, fftshift, mask, ifftshift, ifftn, .real) computed exactly, without FFT or complex numbers.

    With X = DFT(x) and S the masked set of frequencies (k, l), the reference returns
        y = x - (1 - s) * Re(IDFT(1_S X)) = x - (1 - s) / (H W) * sum over (k, l) in S of (A_kl cos + B_kl sin)(phi_kl)
    where phi_kl(m, n) = 2 pi (k m / H + l n / W), A_kl = <x, cos phi_kl> and B_kl = <x, sin phi_kl> (because
    X[k, l] = A - iB and Re((A - iB) e^{i phi}) = A cos phi + B sin phi). So with the rows of `basis` being those
    cosines and sines, y = x - (1 - s) / (H W) * (x basis^T) basis: two thin matmuls, O(|S| H W) per plane.
    For t = 1, S = {0, -1} x {0, -1} (4 bins, 7 non-zero rows), which for H, W >= 3 reads
        y = x - (1 - s) * (mean(x) + (P01 + P10 + P11)(x) / 2),   Pkl: projection onto the real (k, l) harmonic.
    Any H, W >= 1 and any t (where H < 2t, S is what the reference's wrapped slice masks). (..., H, W) -> same shape
    and dtype; fp16 / bf16 accumulate in fp32.
    """
    threshold = operator.index(threshold)
    H, W = x.shape[-2:]
    acc = torch.promote_types(x.dtype, torch.float32)               # FreeU filter accumulates in fp32
    basis = _masked_basis(H, W, threshold, acc, x.device)            # (J, H W)
    xf = x.reshape(-1, H * W).to(acc)                                # (N, H W): one row per plane
    y = torch.addmm(xf, xf @ basis.T, basis, alpha=-(1 - scale) / (H * W))   # (N, J) coefficients, expanded back
    return y.to(x.dtype).reshape(x.shape)


def _masked_freqs(n, threshold):
    """The natural DFT frequencies the reference masks on an axis of size n.

    It masks the fftshift-ed positions range(n)[n//2 - t : n//2 + t] (Python slicing: a negative start wraps once,
    the stop clips); position j holds frequency (j - n//2) mod n. For t = 1 that is {-1, 0} (as n - 1 and 0), with
    n = 2 giving {1, 0} (the Nyquist bin, so a 2 x 2 plane becomes s x) and n = 1 giving {0}.
    """
    centre = n // 2
    return [(j - centre) % n for j in range(n)[centre - threshold:centre + threshold]]


def _masked_basis(H, W, threshold, dtype, device):
    """Rows cos(phi_kl), then sin(phi_kl), over the masked bins (k, l), flattened over (H, W): (J, H W).
    A bin equal to its own conjugate (2k = 0 mod H and 2l = 0 mod W: DC, Nyquist) has sin = 0: its row is left out."""
    if torch.compiler.is_compiling():  # a constant of the compiled graph; eagerly, built once per size and device
        return _build_basis(H, W, threshold, dtype, device)
    return _cached_basis(H, W, threshold, dtype, device)


def _build_basis(H, W, threshold, dtype, device):
    bins = [(k, l) for k in _masked_freqs(H, threshold) for l in _masked_freqs(W, threshold)]
    k = torch.tensor([b[0] for b in bins], dtype=torch.int64, device=device)[:, None, None]
    l = torch.tensor([b[1] for b in bins], dtype=torch.int64, device=device)[:, None, None]
    m = torch.arange(H, device=device)[:, None]
    n = torch.arange(W, device=device)
    phase = (k * m % H) * W + (l * n % W) * H                         # (bins, H, W), exact, in units of 2 pi / (H W)
    angle = (phase.to(dtype) * (2 * math.pi / (H * W))).reshape(len(bins), H * W)
    odd = [i for i, (a, b) in enumerate(bins) if (2 * a) % H or (2 * b) % W]
    return torch.cat([angle.cos(), angle[odd].sin()])


_cached_basis = functools.lru_cache(maxsize=64)(_build_basis)
