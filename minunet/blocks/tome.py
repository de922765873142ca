"""Token merging for Stable Diffusion (ToMe for SD: Bolya & Hoffman 2023, arXiv 2303.17604).

Before a transformer block's self-attention, r = int(ratio * N) of its N image tokens are merged into others by
bipartite soft matching; attention runs on N - r tokens, and every merged token then takes its partner's output:

    dst   one token per full sy x sx cell of the (h, w) token grid, the cell's top-left (no random choice)
    src   all the others; each one's partner is the dst token most similar to it, by the cosine similarity of
          the block's input x (before norm1)
    merge the r src tokens whose partner is most similar: dst <- mean(dst, the src merged into it)
    after attention, a merged src token gets its partner's output, every other token its own

Same maths as the `tomesd` package's apply_patch on diffusers' UNet with use_rand=False and its defaults:
self-attention only (merge_attn; cross-attention and the feed-forward see every token), and only where the
image is downsampled at most `max_downsample` times (1: the full-resolution level alone), which each block reads,
as tomesd does, off its token count and the UNet's input size (recorded by a forward pre-hook on the UNet).
ToMe attaches from outside: `enable_tome(unet, ratio)` sets `block.tome` on the UNet's BasicTransformerBlocks,
whose forward shows where it acts; `disable_tome(unet)` sets it back to None and removes the hook.
"""
import math
from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class ToMe:
    ratio: float = 0.5        # fraction of a block's tokens merged away (at most 1 - 1 / (sx * sy))
    max_downsample: int = 1   # merge where the image is downsampled 1, 2, 4 or 8 times at most (1: level 0 only)
    sx: int = 2               # dst stride along the width
    sy: int = 2               # dst stride along the height
    size: tuple = None        # (H, W) of the UNet's input, recorded by a forward pre-hook on the UNet
    hook: object = field(default=None, repr=False)   # that hook's handle (enable_tome / disable_tome)

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise ValueError(f"ToMe: ratio must be a number in [0, 1), got {self.ratio!r}")
        for name in ("max_downsample", "sx", "sy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ToMe: {name} must be an integer >= 1, got {value!r}")

    def __call__(self, attn, h, x):
        """attn(h) on the merged tokens, spread back to all N: h = norm1(x) (B, N, C); x, the block's input, is
        what the tokens are matched on."""
        merge = self.match(x)
        return attn(h) if merge is None else merge.unmerge(attn(merge.merge(h)))

    def match(self, x):
        """The Merge of this block call, or None where nothing merges (too deep a level, r = 0)."""
        H, W = self.size
        down = math.ceil(math.sqrt(H * W // x.shape[1]))   # the level's downsampling, read off the token count
        r = int(x.shape[1] * self.ratio)
        if down > self.max_downsample or r <= 0:
            return None
        return Merge(x, math.ceil(H / down), math.ceil(W / down), r=r, sx=self.sx, sy=self.sy)


def _take(x, index):
    """x (B, N, C), index (B, M) -> (B, M, C): the rows of x at index."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def split_grid(h, w, sx, sy, device):
    """Token indices (raster order) of the dst tokens, the top-left of each full sy x sx cell, and of the rest."""
    y = torch.arange(0, h - h % sy, sy, device=device)
    x = torch.arange(0, w - w % sx, sx, device=device)
    dst = (y[:, None] * w + x).reshape(-1)
    is_dst = torch.zeros(h * w, dtype=torch.bool, device=device)
    is_dst[dst] = True
    return dst, (~is_dst).nonzero().reshape(-1)


class Merge:
    """One block call's bipartite matching: merge (B, N, C) -> (B, N - r, C) as [unmerged src; dst], unmerge back."""

    def __init__(self, x, h, w, *, r, sx, sy):
        B, N, _ = x.shape
        dst, src = split_grid(h, w, sx, sy, x.device)
        self.r = r = min(r, len(src))                     # cannot merge more than every src token
        with torch.no_grad():
            metric = x / x.norm(dim=-1, keepdim=True)
            scores = metric[:, src] @ metric[:, dst].transpose(1, 2)   # (B, Ns, Nd) cosine similarities
            best, partner = scores.max(dim=-1)                          # each src token's most similar dst
            order = best.argsort(dim=-1, descending=True)               # the most similar pairs merge first
        self.merged, self.kept = order[:, :r], order[:, r:]             # positions in src, (B, r) / (B, Ns - r)
        self.partner = partner.gather(1, self.merged)                   # (B, r) position in dst of each merged one
        self.src = src.expand(B, -1)
        self.dst = dst.expand(B, -1)
        self.n = N

    def merge(self, x):
        """(B, N, C) -> (B, N - r, C): the kept src tokens, then the dst tokens averaged with their merged src."""
        src, dst = _take(x, self.src), _take(x, self.dst)
        index = self.partner[..., None].expand(-1, -1, x.shape[-1])
        dst = dst.scatter_reduce(1, index, _take(src, self.merged), reduce="mean")   # mean includes dst itself
        return torch.cat([_take(src, self.kept), dst], dim=1)

    def unmerge(self, y):
        """(B, N - r, C) -> (B, N, C): each token's own output, a merged one its partner's."""
        kept, dst = y[:, :self.kept.shape[1]], y[:, self.kept.shape[1]:]
        out = y.new_zeros(y.shape[0], self.n, y.shape[-1])
        index = lambda tokens: tokens[..., None].expand(-1, -1, y.shape[-1])   # noqa: E731
        out.scatter_(1, index(self.dst), dst)
        out.scatter_(1, index(self.src.gather(1, self.kept)), kept)
        out.scatter_(1, index(self.src.gather(1, self.merged)), _take(dst, self.partner))
        return out


def tome_blocks(unet):
    """The image transformer blocks of `unet` (down, middle, up), where token merging attaches."""
    return [t for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if block.attentions is not None
            for a in block.attentions for t in a.transformer_blocks]


def enable_tome(unet, ratio=0.5, *, max_downsample=1, sx=2, sy=2):
    """Token merging on `unet` (see the module docstring); replaces any earlier setting. -> the ToMe."""
    tome = ToMe(ratio, max_downsample, sx, sy)
    disable_tome(unet)
    tome.hook = unet.register_forward_pre_hook(lambda module, args: setattr(tome, "size", tuple(args[0].shape[-2:])))
    for block in tome_blocks(unet):
        block.tome = tome
    return tome


def disable_tome(unet):
    for block in tome_blocks(unet):
        if block.tome is not None and block.tome.hook is not None:
            block.tome.hook.remove()
            block.tome.hook = None
        block.tome = None
