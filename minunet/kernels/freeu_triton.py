"""FreeU's decoder input in one fused write: out = cat([h[:, :C//2] * factor, h[:, C//2:], fourier_filter(hs, 1, s)]).

torch.cat reads h and hs once and writes out once; so does this kernel, as seen from DRAM:
- one program per output plane (sample i, channel c) of the (B, C + C_skip, H, W) result;
- a backbone plane is read, scaled (first half of the channels) and written;
- a skip plane is filtered in two passes over the same plane by the same program: pass 1 reduces it to its 7
  coefficients on the 2-D harmonics of the masked bins (k, l) in {0, -1}^2, pass 2 re-reads it (from L1/L2: a plane
  is at most a few tens of KB) and writes y = x - (1 - s) / (H W) * low(x). The filter maths and its edge cases are
  minunet.blocks.freeu.fourier_filter's (which is this kernel's reference), specialised to FreeU's threshold 1.
Version 2 needs the channel mean of h before any backbone plane is written: a small reduction kernel computes it
first (channel_mean: one extra read of h, the price of the structure-adaptive rule); the caller min-max
normalises that (B, 1, H, W) map (minunet.blocks.freeu.normalise_map, a few torch ops on a tensor C times smaller than h)
and passes it in as `weight`.
Inputs are NCHW-contiguous (others are copied); all arithmetic is fp32, results are stored in h's dtype.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _backbone_plane(src, dst, weight, HW, b, VERSION: tl.constexpr, BLOCK: tl.constexpr):
    """dst = src * b (version 1) or src * (1 + (b - 1) * weight) (version 2); b = 1 copies."""
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        x = tl.load(src + offs, mask=mask).to(tl.float32)
        if VERSION == 1:
            x = x * b
        else:
            x = x * (1 + (b - 1) * tl.load(weight + offs, mask=mask))
        tl.store(dst + offs, x.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _harmonic(idx, n, present):
    """cos and sin of the first harmonic 2 pi idx / n, angle folded into (-pi, pi]; zero where the axis has no
    second masked bin (n = 1: the reference masks only bin 0 there)."""
    centred = tl.where(2 * idx > n, idx - n, idx).to(tl.float32)
    angle = centred * (6.283185307179586 / n)
    return tl.cos(angle) * present, tl.sin(angle) * present


@triton.jit
def _skip_plane(src, dst, H, W, keep, row1, col1, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """dst = fourier_filter(src, 1, s) for one (H, W) plane; keep = (1 - s) / (H W).

    With a = 2 pi m / H, c = 2 pi n / W, the masked band is
        low = A0 + Ac cos c + Bc sin c + Aa cos a + Ba sin a + Aac cos(a + c) + Bac sin(a + c)
    where each A (B) is the plane's dot product with the matching cosine (sine)."""
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    # pass 1: the 7 coefficients, as per-column partial sums folded over the plane
    a0 = tl.zeros([BLOCK_W], tl.float32)
    ac = tl.zeros([BLOCK_W], tl.float32)
    bc = tl.zeros([BLOCK_W], tl.float32)
    aa = tl.zeros([BLOCK_W], tl.float32)
    ba = tl.zeros([BLOCK_W], tl.float32)
    aac = tl.zeros([BLOCK_W], tl.float32)
    bac = tl.zeros([BLOCK_W], tl.float32)
    for r0 in range(0, H, BLOCK_H):
        m = r0 + rows
        cos_a, sin_a = _harmonic(m, H, row1)
        for c0 in range(0, W, BLOCK_W):
            n = c0 + cols
            cos_c, sin_c = _harmonic(n, W, col1)
            mask = (m[:, None] < H) & (n[None, :] < W)
            x = tl.load(src + m[:, None] * W + n[None, :], mask=mask, other=0.0).to(tl.float32)
            z = tl.sum(x, axis=0)                                  # (BLOCK_W,) column sums
            zc = tl.sum(x * cos_a[:, None], axis=0)
            zs = tl.sum(x * sin_a[:, None], axis=0)
            a0 += z
            ac += z * cos_c
            bc += z * sin_c
            aa += zc
            ba += zs
            aac += zc * cos_c - zs * sin_c                         # cos(a + c) = cos a cos c - sin a sin c
            bac += zs * cos_c + zc * sin_c                         # sin(a + c) = sin a cos c + cos a sin c
    A0 = tl.sum(a0, axis=0)
    Ac = tl.sum(ac, axis=0)
    Bc = tl.sum(bc, axis=0)
    Aa = tl.sum(aa, axis=0)
    Ba = tl.sum(ba, axis=0)
    Aac = tl.sum(aac, axis=0)
    Bac = tl.sum(bac, axis=0)
    # pass 2: y = x - keep * low, low split as column terms + cos a * (...) + sin a * (...)
    for r0 in range(0, H, BLOCK_H):
        m = r0 + rows
        cos_a, sin_a = _harmonic(m, H, row1)
        for c0 in range(0, W, BLOCK_W):
            n = c0 + cols
            cos_c, sin_c = _harmonic(n, W, col1)
            mask = (m[:, None] < H) & (n[None, :] < W)
            x = tl.load(src + m[:, None] * W + n[None, :], mask=mask, other=0.0).to(tl.float32)
            base = A0 + Ac * cos_c + Bc * sin_c
            on_cos = Aa + Aac * cos_c + Bac * sin_c
            on_sin = Ba + Bac * cos_c - Aac * sin_c
            low = base[None, :] + cos_a[:, None] * on_cos[None, :] + sin_a[:, None] * on_sin[None, :]
            y = x - keep * low
            tl.store(dst + m[:, None] * W + n[None, :], y.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _freeu_concat_kernel(h, hs, weight, out, C, CS, H, W, b, keep, row1, col1,
                         VERSION: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)                          # output plane (i, c) of (B, C + CS, H, W)
    i = plane // (C + CS)
    c = plane % (C + CS)
    HW = H * W
    if c < C:                                                      # backbone channel
        factor = tl.where(c < C // 2, b, 1.0)
        _backbone_plane(h + (i * C + c) * HW, out + plane * HW, weight + i * HW, HW, factor,
                        VERSION, BLOCK_H * BLOCK_W)
    else:                                                          # skip channel
        _skip_plane(hs + (i * CS + c - C) * HW, out + plane * HW, H, W, keep, row1, col1, BLOCK_H, BLOCK_W)


@triton.jit
def _channel_mean_kernel(h, mean, C, HW, BLOCK: tl.constexpr):
    """mean[i, p] = h[i, :, p].mean() in fp32; grid (B, cdiv(HW, BLOCK))."""
    i = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    acc = tl.zeros([BLOCK], tl.float32)
    for c in range(0, C):
        acc += tl.load(h + (i * C + c) * HW + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(mean + i * HW + offs, acc / C, mask=mask)


def channel_mean(h):
    """(B, C, H, W) -> (B, 1, H, W) fp32 channel mean."""
    h = h.contiguous()
    B, C, H, W = h.shape
    mean = torch.empty((B, 1, H, W), dtype=torch.float32, device=h.device)
    block = min(1024, triton.next_power_of_2(H * W))
    _channel_mean_kernel[(B, triton.cdiv(H * W, block))](h, mean, C, H * W, BLOCK=block)
    return mean


def launch_decoder_input(h, hs, *, b, s, weight=None):
    """(B, C, H, W), (B, C_skip, H, W) -> (B, C + C_skip, H, W) in h's dtype; runs the Triton kernels (CUDA tensors,
    or CPU tensors under TRITON_INTERPRET=1). weight: None (version 1) or version 2's (B, 1, H, W) fp32 map."""
    if h.dim() != 4 or hs.dim() != 4 or h.shape[0] != hs.shape[0] or h.shape[2:] != hs.shape[2:]:
        raise ValueError(f"freeu_concat: h {tuple(h.shape)} and hs {tuple(hs.shape)} must be (B, C, H, W) tensors "
                         "with the same batch and spatial size")
    if h.dtype != hs.dtype or h.device != hs.device:
        raise ValueError(f"freeu_concat: h is {h.dtype} on {h.device}, hs is {hs.dtype} on {hs.device}; "
                         "give both the same dtype and device")
    h, hs = h.contiguous(), hs.contiguous()
    B, C, H, W = h.shape
    CS = hs.shape[1]
    if weight is not None and tuple(weight.shape) != (B, 1, H, W):
        raise ValueError(f"freeu_concat: weight {tuple(weight.shape)} must be (B, 1, H, W) = {(B, 1, H, W)}")
    version = 1 if weight is None else 2
    weight = h if weight is None else weight.to(torch.float32).contiguous()  # version 1 never reads it
    out = torch.empty((B, C + CS, H, W), dtype=h.dtype, device=h.device)
    block_w = min(128, triton.next_power_of_2(W))
    block_h = max(1, min(triton.next_power_of_2(H), 1024 // block_w))
    _freeu_concat_kernel[(B * (C + CS),)](
        h, hs, weight, out, C, CS, H, W, float(b), (1.0 - float(s)) / (H * W),
        1.0 if H > 1 else 0.0, 1.0 if W > 1 else 0.0,
        VERSION=version, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=4 if block_h * block_w >= 512 else 2)
    return out
