"""The Stable Diffusion UNet (SD 1.x, SD 2.x, SDXL base and refiner) as one module driven by UNetConfig.

    x (B, in, H, W) -> conv_in -> down levels (skips saved) -> mid -> up levels (skips consumed) -> conv_out
    t -> sinusoidal [cos, sin] -> MLP = temb, added in every resnet; SDXL adds an MLP of (pooled text ++ ids)
    context (B, T, context_dim) -> cross-attention in every transformer block
"""
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ModelDtypeDevice
from .blocks.resnet import TimestepEmbedding, timestep_embedding
from .blocks.unet_blocks import DownBlock, MidBlock, UpBlock, branch_parts, decoder, encoder
from .config import UNetConfig
from .checkpointing import GradientCheckpointingMixin
from .freeu import FreeUMixin
from .lora import LoraMixin


class UNet(FreeUMixin, LoraMixin, GradientCheckpointingMixin, ModelDtypeDevice, nn.Module):
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
        self.freeu = None  # FreeU settings (or None); setting them works out freeu_plan, what each up block applies
        self.deepcache = None  # DeepCache (deepcache.py), set from outside by enable_deepcache: reuses deep features

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
        """Backbone channels entering each decoder resnet, [up block][resnet]: what FreeU's stage rule reads."""
        return [[backbone for backbone, _ in UpBlock.widths(self.config, i)] for i in range(len(self.up_blocks))]

    def forward(self, x, t, context, *, text_embeds=None, time_ids=None):
        """x (B, in, H, W), t scalar or (B,), context (B, T, context_dim) -> raw prediction (B, out, H, W)."""
        temb = self.time_embed(t, x.shape[0], x.dtype, text_embeds, time_ids)
        h = self.conv_in(x)
        skips = [h]                                   # s0; then one per down layer and one per downsample
        top_enc, deep_enc, deep_dec, top_dec = branch_parts(
            len(self.down_blocks), self.config.layers_per_block, None if self.deepcache is None else self.deepcache.branch)
        h = encoder(self.down_blocks, h, skips, top_enc, temb, context)   # shallow part (none without DeepCache)

        def deep(h):  # below DeepCache's branch: the rest of the encoder, the middle, the decoder up to the branch
            h = self.mid_block(encoder(self.down_blocks, h, skips, deep_enc, temb, context), temb, context)
            return decoder(self.up_blocks, h, skips, deep_dec, self.freeu_plan, temb, context)
        # DeepCache (deepcache.py) attaches here: between its full steps `deep` does not run, its last output is reused
        h = deep(h) if self.deepcache is None else self.deepcache(deep, h)
        h = decoder(self.up_blocks, h, skips, top_dec, self.freeu_plan, temb, context)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
