"""LoRA fine-tuning of the tiny SD 1.x pipeline, end to end, in seconds on a CPU.

    python examples/train_lora.py --steps 30 --out tiny-lora.safetensors

The research path in a page: a handful of generated images (coloured discs on gradients) with captions ->
VAE encode (posterior sample x scaling factor) -> noise at random timesteps (DDPM forward process) -> the UNet
with a trainable LoRA on its attention projections and 3x3 resnet convs (the base frozen) and gradient
checkpointing -> epsilon MSE -> AdamW on the LoRA only. The loss on a fixed held batch (same images, noise and
timesteps before and after) must go down; the LoRA is saved in the kohya format, taken off (the held loss is the untrained one again, bit for bit), and
loaded back through Pipeline.load_lora: it must give the trained model's held loss again.
The tiny model's weights are random, so the images it samples are noise either way: this checks the machinery.
"""
import argparse
import math
from functools import partial

import torch
import torch.nn.functional as F

from minunet import Pipeline
from minunet.loading.lora import new_lora


def make_images(n=4, size=128, seed=0):
    """(n, 3, size, size) in [-1, 1]: a disc of a random colour on a gradient, and a caption for each."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    colours = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.2), "blue": (0.1, 0.2, 1.0), "yellow": (1.0, 0.9, 0.1)}
    images, captions = [], []
    for i in range(n):
        name = list(colours)[i % len(colours)]
        cy, cx, r = (0.3 + 0.4 * torch.rand(3, generator=g)).tolist()
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < (0.25 * r) ** 2).float()
        background = torch.stack([xx, yy, 1 - xx]) * 0.5
        colour = torch.tensor(colours[name])[:, None, None]
        images.append((background * (1 - disc) + colour * disc) * 2 - 1)
        captions.append(f"a {name} disc")
    return torch.stack(images), captions


def noised_batch(pipe, latents, g):
    """(x_t, t, eps) for the DDPM forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    abar = pipe.schedule.alphas_cumprod()
    t = torch.randint(0, len(abar), (latents.shape[0],), generator=g)
    eps = torch.randn(latents.shape, generator=g)
    a = abar[t][:, None, None, None]
    return a.sqrt() * latents + (1 - a).sqrt() * eps, t.float(), eps


def loss_on(pipe, batch, context):
    x_t, t, eps = batch
    return F.mse_loss(pipe.unet(x_t, t, context), eps)  # epsilon prediction (the SD 1.x schedule)


def train(steps=30, lr=1e-2, rank=4, out="tiny-lora.safetensors", seed=0, log=print):
    torch.manual_seed(seed)
    pipe = Pipeline.tiny()
    pipe.unet.requires_grad_(False).train()
    pipe.unet.enable_gradient_checkpointing()
    images, captions = make_images()
    with torch.no_grad():
        latents = pipe.vae.encode(images).sample(torch.Generator().manual_seed(seed)) * pipe.vae.scaling_factor
        context = pipe.text.encode(captions, guidance=False).context
    lora = new_lora(pipe.unet, rank, include=("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"), seed=seed)
    opt = torch.optim.AdamW(lora.parameters(), lr=lr, weight_decay=0.0)
    held = noised_batch(pipe, latents, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        before = float(loss_on(pipe, held, context))
    g = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        loss = loss_on(pipe, noised_batch(pipe, latents, g), context)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step:3d}  loss {float(loss):.4f}")
    with torch.no_grad():
        after = float(loss_on(pipe, held, context))
    log(f"held-out batch loss: {before:.4f} before, {after:.4f} after {steps} steps")
    lora.save(out)
    # the trained LoRA off (the base weights were never changed), the saved file on: the trained model again
    lora.remove()
    with torch.no_grad():
        untrained = float(loss_on(pipe, held, context))
        pipe.load_lora(out)
        reloaded = float(loss_on(pipe, held, context))
    if untrained != before:
        raise SystemExit(f"without the LoRA the held loss is {untrained}, before training it was {before}")
    log(f"saved {out} ({len(lora.layers)} LoRA layers, kohya format); reloaded held loss {reloaded:.4f}")
    if not math.isclose(reloaded, after, rel_tol=1e-4):
        raise SystemExit(f"reloaded LoRA gives held loss {reloaded}, the trained one {after}")
    return before, after, reloaded


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="tiny-lora.safetensors")
    args = ap.parse_args(argv)
    before, after, _ = train(args.steps, args.lr, args.rank, args.out, args.seed, log=partial(print, flush=True))
    if not after < before:
        raise SystemExit(f"the held-out loss did not go down ({before:.4f} -> {after:.4f})")


if __name__ == "__main__":
    main()
