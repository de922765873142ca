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
        h, skips = encode(self.down_blocks, self.conv_in(x), temb, context)
        h = self.mid_block(h, temb, context)
        h = decode(self.up_blocks, h, skips, temb, context, self.freeu_plan)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def encode(down_blocks, h, temb, context, frames=None):
    """conv_in's output through the down blocks -> (h, skips): s0 = conv_in's output, then one skip per down
    resnet and one per downsample. (frames: the video UNet's, handed to its blocks' temporal layers.)"""
    skips = [h]
    for block in down_blocks:
        h, s = block(h, temb, context, frames)
        skips += s
    return h, skips


def decode(up_blocks, h, skips, temb, context, freeu_plan, frames=None):
    """The up blocks, each consuming its skips last-in first-out, FreeU's Stage per resnet from `freeu_plan`."""
    for i, block in enumerate(up_blocks):
        n = len(block.resnets)
        block_skips, skips = skips[-n:], skips[:-n]
        size = skips[-1].shape[2:] if skips else None  # upsample to the next skip's size (odd sizes)
        freeu = None if freeu_plan is None else freeu_plan[i]  # per resnet: Stage | None
        h = block(h, block_skips, temb, context, size, freeu=freeu, frames=frames)
    return h


def decoder_widths(config):
    """Backbone channels entering each decoder resnet, [up block][resnet]: what FreeU's stage rule reads."""
    return [[backbone for backbone, _ in UpBlock.widths(config, i)] for i in range(len(config.block_out_channels))]
