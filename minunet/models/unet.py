"""The Stable Diffusion UNet (SD 1.x, SD 2.x, SDXL base and refiner) as one module driven by UNetConfig.

    x (B, in, H, W) -> conv_in -> down levels (skips saved) -> mid -> up levels (skips consumed) -> conv_out
    t -> sinusoidal [cos, sin] -> MLP = temb, added in every resnet; SDXL adds an MLP of (pooled text ++ ids)
    context (B, T, context_dim) -> cross-attention in every transformer block
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import ModelDtypeDevice
from ..blocks.resnet import TimestepEmbedding, timestep_embedding
from ..blocks.freeu import FreeUSwitch
from ..blocks.unet_blocks import DownBlock, MidBlock, UpBlock
from .config import UNetConfig
from .checkpointing import GradientCheckpointingMixin


class UNet(FreeUSwitch, GradientCheckpointingMixin, ModelDtypeDevice, nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        c0 = cfg.block_out_channels[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(c0, cfg.time_embed_dim)
        if cfg.adm_in_channels is not None:
            self.add_embedding = TimestepEmbedding(cfg.adm_in_channels, cfg.time_embed_dim)
        n = len(cfg.block_out_channels)
        self.down_blocks = nn.ModuleList([DownBlock(cfg, i) for i in range(n)])
        self.mid_block = MidBlock(cfg)
        self.up_blocks = nn.ModuleList([UpBlock(cfg, i) for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, c0, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, 3, padding=1)
        self.deepcache = None  # DeepCache (deepcache.py), set from outside: reuses the deep part's output between steps

    def time_embed(self, t, batch, dtype, text_embeds=None, time_ids=None):
        """(B,) timesteps [+ SDXL pooled text (B, 1280) and ids (B, 5 or 6)] -> temb (B, 4 * C0)."""
        t = torch.as_tensor(t, device=self.device).reshape(-1).expand(batch)
        temb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0]).to(dtype))
        if self.config.adm_in_channels is not None:
            if text_embeds is None or time_ids is None:
                raise ValueError("this is an SDXL-type UNet: pass text_embeds (pooled text) and time_ids "
                                 "(original size, crop top-left, target size or aesthetic score)")
            ids = timestep_embedding(time_ids.reshape(-1), self.config.addition_time_embed_dim)
            adm = torch.cat([text_embeds, ids.reshape(batch, -1).to(text_embeds.dtype)], dim=-1)
            if adm.shape[-1] != self.config.adm_in_channels:
                raise ValueError(f"text_embeds ({text_embeds.shape[-1]}) + {time_ids.shape[-1]} ids x "
                                 f"{self.config.addition_time_embed_dim} = {adm.shape[-1]} features, but this UNet's "
                                 f"add_embedding expects {self.config.adm_in_channels}")
            temb = temb + self.add_embedding(adm.to(dtype))
        return temb

    def decoder_widths(self):
        return decoder_widths(self.config)

    def forward(self, x, t, context, *, text_embeds=None, time_ids=None):
        """x (B, in, H, W), t scalar or (B,), context (B, T, context_dim) -> raw prediction (B, out, H, W)."""
        temb = self.time_embed(t, x.shape[0], x.dtype, text_embeds, time_ids)
        skips = [self.conv_in(x)]        # s0; then one per down layer and one per downsample
        enc, dec = (0, float("inf")) if self.deepcache is None else self.deepcache.cut  # units above DeepCache's branch
        h = encode(self.down_blocks, skips, 0, enc, temb, context)                    # the shallow encoder
        if self.deepcache is None or self.deepcache.full_step(h):  # the deep part: every step, or DeepCache's full ones
            h = self.mid_block(encode(self.down_blocks, skips, enc, float("inf"), temb, context, h=h), temb, context)
            h = decode(self.up_blocks, h, skips, 0, dec, temb, context, self.freeu_plan)
        h = h if self.deepcache is None else self.deepcache.kept(h)  # DeepCache (deepcache.py): kept, reused between
        h = decode(self.up_blocks, h, skips, dec, float("inf"), temb, context, self.freeu_plan)  # the shallow decoder
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def encode(down_blocks, skips, start, stop, temb, context, frames=None, h=None):
    """Encoder units start..stop-1 (a level's layers, then its downsampler) on h (default: the last skip), their
    skips appended -> h. Units count layers_per_block + 1 a level. (frames: the video UNet's temporal layers'.)"""
    h, per = skips[-1] if h is None else h, len(down_blocks[0].resnets) + 1
    for i, block in enumerate(down_blocks):
        if max(start - i * per, 0) < min(stop - i * per, per):
            h, s = block(h, temb, context, frames, range(max(start - i * per, 0), min(stop - i * per, per)))
            skips += s
    return h


def decode(up_blocks, h, skips, start, stop, temb, context, freeu_plan, frames=None):
    """Decoder units start..stop-1 (layers_per_block + 2 a block: its layers, the upsampler), FreeU's plan per block."""
    per, plan = len(up_blocks[0].resnets) + 1, [None] * len(up_blocks) if freeu_plan is None else freeu_plan
    for i, block in enumerate(up_blocks):
        if max(start - i * per, 0) < min(stop - i * per, per):
            h = block(h, skips, temb, context, plan[i], frames, range(max(start - i * per, 0), min(stop - i * per, per)))
    return h


def decoder_widths(config):
    """Backbone channels entering each decoder resnet, [up block][resnet]: what FreeU's stage rule reads."""
    return [[backbone for backbone, _ in UpBlock.widths(config, i)] for i in range(len(config.block_out_channels))]
