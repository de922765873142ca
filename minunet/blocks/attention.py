"""The UNet's spatial transformer: attention, GEGLU feed-forward, transformer block, Transformer2DModel.

Names are diffusers' (`to_q`, `to_out.0`, `ff.net.0.proj`, `ff.net.2`, `proj_in`, ...), which are also the
original checkpoints' names inside a transformer, so only the outer prefixes need mapping.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None. Same maths as diffusers Attention."""

    def __init__(self, dim, heads, context_dim=None, upcast=False, bias=False):
        super().__init__()
        self.heads, self.upcast = heads, upcast
        context_dim = dim if context_dim is None else context_dim
        # q, k, v without biases in the SD UNets; with biases in the latent upscaler's K-UNet
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(context_dim, dim, bias=bias)
        self.to_v = nn.Linear(context_dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # index 1 is a Dropout in diffusers: no weights

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = (rearrange(p(s), "b n (h d) -> b h n d", h=self.heads)
                   for p, s in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        if self.upcast and q.dtype in (torch.float16, torch.bfloat16):
            # upcast_attention (SD 2.1 768-v): softmax(q k^T / sqrt(d)) in fp32, its logits overflow fp16
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head size)
        return self.to_out[0](rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Linear to 2 x inner, then value * gelu(gate) (exact erf GELU)."""

    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        # net.1 is a Dropout in diffusers and the original: Identity keeps net.2's index
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention on the text context, GEGLU feed-forward."""

    def __init__(self, dim, heads, context_dim, upcast=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # LayerNorm eps 1e-5
        self.attn1 = Attention(dim, heads, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    gradient_checkpointing = False  # recompute in backward instead of storing activations (minunet.models.checkpointing)
    tome = None  # token merging (blocks/tome.py), set from outside: self-attention then runs on fewer tokens

    def forward(self, x, context):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x, context):
        x = x + (self.attn1(self.norm1(x)) if self.tome is None else self.tome(self.attn1, self.norm1(x), x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """GroupNorm -> proj_in -> `depth` transformer blocks over the H*W tokens -> proj_out, plus a residual.

    proj_in/proj_out are 1x1 convs in SD 1.x and Linear layers in SD 2.x / SDXL (`use_linear_projection`);
    the two are the same map, applied before or after flattening the image into tokens.
    """

    def __init__(self, channels, heads, depth, context_dim, linear_proj, upcast=False, groups=32):
        super().__init__()
        self.linear_proj = linear_proj
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)  # GroupNorm eps 1e-6 in transformer blocks
        proj = nn.Linear if linear_proj else (lambda i, o: nn.Conv2d(i, o, 1))
        self.proj_in = proj(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, context_dim, upcast) for _ in range(depth)])
        self.proj_out = proj(channels, channels)

    def forward(self, x, context):
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.linear_proj:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        if self.linear_proj:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear_proj:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.linear_proj:
            x = self.proj_out(x)
        return x + residual
