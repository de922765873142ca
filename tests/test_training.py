"""Training: gradients equal diffusers' for every tiny structure (every parameter and every input), gradient
checkpointing changes nothing but the memory, FreeU's torch path passes gradcheck in float64, VAE encode is
differentiable as diffusers', and torch.compile of a LoRA training step gives eager's loss and gradients."""
import statistics

import pytest
import torch

from helpers import TINY, assert_close, diffusers_kwargs, diffusers_unet, randomize_, unet_inputs
from minunet import UNet, UNetConfig
from minunet.blocks.freeu import Stage, decoder_input
from minunet.freeu import FreeU
from minunet.loading.configs import vae_config


def loss_of(out, seed=7):
    """A scalar whose gradient weights every output element differently (a plain sum would hide permutations)."""
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out * w).sum()


def leaf_inputs(cfg, h=12, w=20):
    x, t, ctx, kw = unet_inputs(cfg, h=h, w=w)
    leaves = {"x": x.requires_grad_(), "context": ctx.requires_grad_()}
    for k, v in kw.items():
        if k == "text_embeds":
            leaves[k] = v.requires_grad_()
    return x, t, ctx, kw, leaves


def grads(model, leaves):
    """{name: gradient} of every parameter and every leaf input, then cleared."""
    out = {f"param {n}": p.grad.clone() for n, p in model.named_parameters()}
    out.update({f"input {n}": v.grad.clone() for n, v in leaves.items()})
    model.zero_grad(set_to_none=True)
    for v in leaves.values():
        v.grad = None
    return out


def our_grads(model, cfg):
    x, t, ctx, kw, leaves = leaf_inputs(cfg)
    loss_of(model(x, t, ctx, **kw)).backward()
    return grads(model, leaves)


@pytest.fixture(scope="module", params=list(TINY))
def pair(request):
    cfg = TINY[request.param]
    ours = randomize_(UNet(cfg), seed=list(TINY).index(request.param)).train()  # str hash() varies per process
    return request.param, cfg, ours, diffusers_unet(ours).train()


def compare_grads(got, expected, where=""):
    """Each gradient within 1e-5 of its own scale. Some are zero in exact arithmetic: a parameter that only adds
    a per-channel constant (a bias, a time projection) right before a GroupNorm with one channel per group
    (the tiny SD 1.5's 32 channels in 32 groups) cannot change the loss; in float32 they are round-off of about
    1e-6. Those (below 1e-4 of the median gradient scale) must agree within 1e-5 of the median scale instead."""
    assert set(got) == set(expected)
    scales = {k: float(g.abs().max()) for k, g in expected.items()}
    typical = statistics.median(scales.values())
    zeros = [k for k, s in scales.items() if s < 1e-4 * typical]
    assert all(k.endswith(".bias") or k.endswith("time_emb_proj.weight") for k in zeros), zeros
    for key, g in expected.items():
        if key in zeros:
            assert float(got[key].abs().max()) <= 1e-5 * typical, f"{where}{key}: not zero"
        else:
            assert_close(got[key], g, msg=where + key)
    return zeros


def test_gradients_equal_diffusers(pair):
    """d loss / d (every parameter, latents, context, pooled text) within 1e-5 of each gradient's scale."""
    name, cfg, ours, ref = pair
    x, t, ctx, kw, leaves = leaf_inputs(cfg)
    loss_of(ref(x, t, ctx, **diffusers_kwargs(kw)).sample).backward()
    expected = grads(ref, leaves)
    got = our_grads(ours, cfg)
    assert len(got) == len(list(ours.parameters())) + len(leaves)
    zeros = compare_grads(got, expected)
    assert (len(zeros) > 0) == name.startswith("sd15")  # only there do 32 channels meet 32 groups


def test_gradient_checkpointing_same_gradients(pair):
    """On: each resnet and transformer block runs twice (forward, recompute in backward) and every gradient is
    the same (bit for bit on CPU); under no_grad nothing recomputes; off again: once."""
    name, cfg, ours, _ = pair
    plain = our_grads(ours, cfg)
    calls = []
    resnet = ours.down_blocks[-1].resnets[0]
    block = ours.mid_block.attentions[0].transformer_blocks[0]
    hooks = [m.register_forward_hook(lambda m, a, o, tag=tag: calls.append(tag))
             for tag, m in (("resnet", resnet.conv1), ("block", block.attn1))]
    try:
        ours.enable_gradient_checkpointing()
        assert ours.is_gradient_checkpointing
        checkpointed = our_grads(ours, cfg)
        assert calls.count("resnet") == 2 and calls.count("block") == 2
        calls.clear()
        with torch.no_grad():
            x, t, ctx, kw = unet_inputs(cfg)
            ours(x, t, ctx, **kw)
        assert calls.count("resnet") == 1
    finally:
        ours.disable_gradient_checkpointing()
        for h in hooks:
            h.remove()
    assert not ours.is_gradient_checkpointing
    for key, g in plain.items():
        torch.testing.assert_close(checkpointed[key], g, rtol=0, atol=0, msg=key)


def test_gradients_with_freeu_equal_diffusers():
    """FreeU on (diffusers' mapping and version 1, which diffusers implements): gradients equal diffusers'
    through its FFT filter, with and without checkpointing."""
    cfg = TINY["sd15"]
    ours = randomize_(UNet(cfg), seed=4).train()
    ref = diffusers_unet(ours).train()
    ref.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    ours.enable_freeu(FreeU.from_arguments(0.9, 0.2, 1.2, 1.4, mapping="diffusers", version=1))
    x, t, ctx, kw, leaves = leaf_inputs(cfg, h=16, w=12)
    loss_of(ref(x, t, ctx).sample).backward()
    expected = grads(ref, leaves)
    for checkpointing in (False, True):
        ours.enable_gradient_checkpointing() if checkpointing else ours.disable_gradient_checkpointing()
        loss_of(ours(x, t, ctx)).backward()
        got = grads(ours, leaves)
        compare_grads(got, expected, f"checkpointing {checkpointing}: ")


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_path_gradcheck_float64(version):
    """Finite differences = autograd for FreeU's decoder input (backbone scaling, version 2's structure map,
    the exact Fourier filter) w.r.t. both inputs, on an odd-sized float64 feature map."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 6, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    hs = torch.randn(2, 4, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    stage = Stage(b=1.3, s=0.7, version=version)
    assert torch.autograd.gradcheck(lambda a, b: decoder_input(a, b, stage), (h, hs))


def test_unet_with_freeu_gradcheck_float64():
    """The whole (very small) UNet with FreeU version 2 on, float64: autograd = finite differences w.r.t. the
    latents, which also catches any in-place op that autograd would miss."""
    cfg = UNetConfig(block_out_channels=(8, 16), attention_levels=(False, True), transformer_depth=(0, 1),
                     num_heads=(1, 2), context_dim=8, norm_num_groups=4)
    unet = randomize_(UNet(cfg).double(), seed=1)
    unet.enable_freeu(FreeU(b1=1.3, b2=1.4, s1=0.9, s2=0.2, version=2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    ctx = torch.randn(1, 3, 8, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda a: unet(a, 500.0, ctx), (x,))


def test_vae_encode_gradients_equal_diffusers():
    """d loss(posterior sample) / d (image, every encoder parameter) equals diffusers' AutoencoderKL."""
    import pipes
    from minunet.loading.vae import vae_from_state_dict

    ref = pipes.diffusers_vae(seed=3).train()
    ours = vae_from_state_dict(ref.state_dict(), config=vae_config(dict(ref.config))).train()
    img = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(1)).mul(2).sub(1).requires_grad_()
    post_ref = ref.encode(img).latent_dist
    z_ref = post_ref.sample(torch.Generator().manual_seed(5))
    loss_of(z_ref).backward()
    expected = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    expected["image"] = img.grad.clone()
    img.grad = None
    z = ours.encode(img).sample(torch.Generator().manual_seed(5))
    assert_close(z.detach(), z_ref.detach(), msg="sample")
    loss_of(z).backward()
    got = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    got["image"] = img.grad
    assert any(k.startswith("encoder.") for k in got)
    zeros = compare_grads(got, expected)
    assert zeros == ["encoder.mid_block.attentions.0.to_k.bias"]  # softmax ignores a constant added to every key


def lora_step_setup():
    """A small UNet, frozen, with a trainable LoRA on attention and resnet convs; one batch."""
    from minunet.loading.lora import load_lora

    import loras
    # one resnet per level and one transformer: tracing cost grows with the block count (~20 s here on CPU)
    cfg = UNetConfig(block_out_channels=(16, 32), attention_levels=(False, True), transformer_depth=(0, 1),
                     num_heads=(2, 2), context_dim=16, norm_num_groups=8, layers_per_block=1)
    unet = randomize_(UNet(cfg), seed=2).train().requires_grad_(False)
    mods = loras.lora_modules(unet, ("to_q", "to_v", "conv1"))
    lora = load_lora(unet, loras.kohya({"lora_unet_": loras.random_lora(mods)}))
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 700.0]), torch.randn(2, 5, 16, generator=g),
             torch.randn(2, 4, 8, 8, generator=g))
    return unet, lora, batch


def test_compiled_lora_training_step_equals_eager():
    """torch.compile (fullgraph over the UNet with its LoRA hooks and checkpointing) of one training step:
    the same loss and LoRA gradients as eager. The aot_eager backend traces what inductor would compile
    (graph capture and the joint forward/backward) without a C++ toolchain, so it stays fast on CPU."""
    unet, lora, (x, t, ctx, target) = lora_step_setup()
    unet.enable_gradient_checkpointing()

    def step(x, t, ctx, target):
        return torch.nn.functional.mse_loss(unet(x, t, ctx), target)

    eager = step(x, t, ctx, target)
    eager.backward()
    expected = {n: p.grad.clone() for n, p in lora.named_parameters()}
    lora.zero_grad(set_to_none=True)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(x, t, ctx, target)
    loss.backward()
    assert_close(loss.detach(), eager.detach(), msg="loss")
    assert len(expected) == 2 * len(lora.layers) > 0
    for n, p in lora.named_parameters():
        assert_close(p.grad, expected[n], msg=n)
    assert all(p.grad is None for p in unet.parameters())  # the frozen UNet got no gradient
