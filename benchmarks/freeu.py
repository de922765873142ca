"""FreeU benchmark: the FFT-free filter against diffusers' fourier_filter at the shapes FreeU sees, and what FreeU
adds to a whole UNet step, for minunet and diffusers side by side (same random weights, same inputs).

    python benchmarks/freeu.py            # filter at SD 1.5 512 px and SDXL 1024 px shapes; full SD 1.5 step at 512 px
    python benchmarks/freeu.py --quick    # same filter shapes, fewer repeats; the step of an SD 1.5 at half widths
                                          # (160, 320, 640, 640) at 256 px (32 x 32 latents): about 1-2 minutes

Targets: the filter >= 15x faster than diffusers' at SDXL shapes on CPU; FreeU adds < 2% to a minunet step on CPU
and < 1% on GPU. Batch 2 (classifier-free guidance) throughout; CPU in float32; on CUDA, fp16 with the fused kernel.
Times are the fastest of interleaved repeats (median in brackets); ratios use the fastest run, the one least
disturbed by other work on the machine.
"""
import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minunet import SD15, SDXL, UNet  # noqa: E402
from minunet import kernels  # noqa: E402
from minunet.blocks.unet_blocks import UpBlock  # noqa: E402
from minunet.blocks.freeu import fourier_filter, freeu_concat, fused_freeu_concat  # noqa: E402
from minunet.freeu import FreeU  # noqa: E402

FACTORS = dict(s1=0.9, s2=0.2, b1=1.3, b2=1.4)
HALF_SD15 = dataclasses.replace(SD15, block_out_channels=(160, 320, 640, 640))  # --quick: a quarter of the FLOPs


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench(fns, repeat, device="cpu"):
    """Interleaved timing of several callables: {name: (min s, median s)}.

    Each of `repeat` rounds calls every function in turn; a fast one is called several times per round, so that
    each function is sampled for about as long as the slowest one (a 2 ms filter next to a 100 ms FFT gets ~50
    samples per round): its minimum is then as robust to a noisy machine as the slow one's."""
    first = {}
    for name, fn in fns.items():  # warm-up, and a first time to size the rounds
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        first[name] = time.perf_counter() - t0
    slowest = max(first.values())
    calls = {k: max(1, min(50, round(slowest / max(v, 1e-6)))) for k, v in first.items()}
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            for _ in range(calls[name]):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def freeu_resnets(cfg, latent, mapping):
    """(h shape, hs shape, b, s) at every decoder resnet FreeU touches, batch 2: the UNet's own FreeU plan."""
    levels = len(cfg.block_out_channels)
    freeu = FreeU(**FACTORS, mapping=mapping)
    widths = [UpBlock.widths(cfg, i) for i in range(levels)]
    plan = freeu.plan([[backbone for backbone, _ in block] for block in widths], cfg.block_out_channels[0])
    out = []
    for i, (block, stages) in enumerate(zip(widths, plan)):
        size = -(-latent // 2 ** (levels - 1 - i))  # ceil: the encoder's sizes
        for (backbone, skip), stage in zip(block, stages):
            if stage is not None:
                out.append(((2, backbone, size, size), (2, skip, size, size), stage.b, stage.s))
    return out


def filter_section(repeat):
    from diffusers.utils.torch_utils import fourier_filter as diffusers_filter

    print("\n== fourier_filter (threshold 1), float32 CPU: minunet closed form vs diffusers' FFT ==")
    for label, cfg, latent in [("SD 1.5 at 512 px", SD15, 64), ("SDXL at 1024 px", SDXL, 128)]:
        print(f"-- {label}: skip shapes FreeU filters (x count per step, diffusers mapping / official mapping)")
        counts = {}
        for mapping in ("diffusers", "official"):
            for _, hs, _, _ in freeu_resnets(cfg, latent, mapping):
                counts.setdefault(hs, {"diffusers": 0, "official": 0})[mapping] += 1
        totals = {"diffusers": [0.0, 0.0], "official": [0.0, 0.0]}
        for hs, count in counts.items():
            x = torch.randn(hs)
            t = bench({"ours": lambda: fourier_filter(x, 1, 0.2), "diffusers": lambda: diffusers_filter(x, 1, 0.2)},
                      repeat)
            ours, theirs = t["ours"][0], t["diffusers"][0]
            for mapping in totals:
                totals[mapping][0] += count[mapping] * ours
                totals[mapping][1] += count[mapping] * theirs
            print(f"  {str(hs):<22} x{count['diffusers']}/{count['official']}  minunet {ours * 1e3:7.2f} ms "
                  f"[{t['ours'][1] * 1e3:6.2f}]  diffusers {theirs * 1e3:8.2f} ms [{t['diffusers'][1] * 1e3:7.2f}]  "
                  f"speed-up {theirs / ours:5.1f}x")
        for mapping, (ours, theirs) in totals.items():
            print(f"  per step, {mapping} mapping: minunet {ours * 1e3:.1f} ms, diffusers {theirs * 1e3:.1f} ms, "
                  f"speed-up {theirs / ours:.1f}x")


def gpu_concat_section(repeat):
    from diffusers.utils.torch_utils import fourier_filter as diffusers_filter

    print("\n== FreeU decoder input on CUDA, fp16: fused kernel vs torch.cat alone vs diffusers' way ==")
    for label, cfg, latent in [("SD 1.5 at 512 px", SD15, 64), ("SDXL at 1024 px", SDXL, 128)]:
        for version in (1, 2):
            sums = {"cat": 0.0, "kernel": 0.0, "torch": 0.0, "diffusers": 0.0}
            for hs_shape in [r for r in freeu_resnets(cfg, latent, "official")]:
                h_shape, s_shape, b, s = hs_shape
                h = torch.randn(h_shape, device="cuda", dtype=torch.float16)
                hs = torch.randn(s_shape, device="cuda", dtype=torch.float16)

                def diffusers_way():  # apply_freeu (in place on a copy) then cat
                    g = h.clone()
                    g[:, :g.shape[1] // 2] *= b
                    return torch.cat([g, diffusers_filter(hs, 1, s)], dim=1)
                t = bench({"cat": lambda: torch.cat([h, hs], 1),
                           "kernel": lambda: fused_freeu_concat(h, hs, b=b, s=s, version=version),
                           "torch": lambda: freeu_concat(h, hs, b=b, s=s, version=version),
                           "diffusers": diffusers_way}, repeat, "cuda")
                for k in sums:
                    sums[k] += t[k][0]
            print(f"  {label}, version {version}, official mapping, per step: torch.cat {sums['cat'] * 1e6:7.0f} us, "
                  f"fused {sums['kernel'] * 1e6:7.0f} us, pure torch {sums['torch'] * 1e6:7.0f} us, "
                  f"diffusers-style (v1 math) {sums['diffusers'] * 1e6:7.0f} us")


@torch.no_grad()
def step_section(cfg, latent, repeat, device, dtype):
    from minunet.cli.parity import diffusers_twin

    print(f"\n== one UNet step, SD 1.5 structure, widths {cfg.block_out_channels}, {latent * 8} px ({latent} x "
          f"{latent} latents), batch 2, {device} {str(dtype)[6:]} ==")
    torch.manual_seed(0)
    ours = UNet(cfg).eval()                                        # default init: random weights
    theirs = diffusers_twin(None, ours)
    if (device, dtype) != ("cpu", torch.float32):
        ours, theirs = ours.to(device, dtype), theirs.to(device, dtype)
    x = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    t = torch.tensor([999.0, 500.0], device=device)
    ctx = torch.randn(2, 77, 768, device=device, dtype=dtype)
    v1_diffusers = FreeU(**FACTORS, mapping="diffusers", version=1)
    v2_official = FreeU(**FACTORS, mapping="official", version=2)

    def ours_with(freeu):
        def run():
            ours.enable_freeu(freeu) if freeu is not None else ours.disable_freeu()
            ours(x, t, ctx)
        return run

    def theirs_with(on):
        def run():
            if on:
                theirs.enable_freeu(**FACTORS)
            else:
                theirs.disable_freeu()
            theirs(x, t, ctx)
        return run
    res = bench({"minunet off": ours_with(None), "minunet diffusers-v1": ours_with(v1_diffusers),
                 "minunet official-v2": ours_with(v2_official),
                 "diffusers off": theirs_with(False), "diffusers on": theirs_with(True)}, repeat, device)
    for name, (low, med) in res.items():
        base = res[name.split()[0] + " off"][0]
        extra = "" if name.endswith("off") else f"   FreeU adds {100 * (low / base - 1):+5.1f}%"
        print(f"  {name:<22} {low * 1e3:9.1f} ms [{med * 1e3:9.1f}]{extra}")
    # the same cost measured in isolation (immune to the step's run-to-run noise): extra time of FreeU's decoder
    # inputs over plain torch.cat at every resnet FreeU touches, divided by the plain step
    for mapping, version in [("diffusers", 1), ("official", 2)]:
        extra = 0.0
        for h_shape, s_shape, b, s in freeu_resnets(cfg, latent, mapping):
            h = torch.randn(h_shape, device=device, dtype=dtype)
            hs = torch.randn(s_shape, device=device, dtype=dtype)
            fused = device == "cuda" and kernels.available()
            fn = fused_freeu_concat if fused else freeu_concat
            r = bench({"cat": lambda: torch.cat([h, hs], 1), "freeu": lambda: fn(h, hs, b=b, s=s, version=version)},
                      max(repeat, 5), device)
            extra += r["freeu"][0] - r["cat"][0]
        print(f"  isolated: FreeU ({mapping} mapping, version {version}) decoder inputs cost {extra * 1e3:.2f} ms "
              f"more than torch.cat = {100 * extra / res['minunet off'][0]:.2f}% of the minunet step")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats; a half-width UNet step at 256 px")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, CUDA: {torch.cuda.is_available()}, "
          f"triton: {kernels.available()}")
    filter_section(repeat=5 if args.quick else 9)
    if args.quick:
        step_section(HALF_SD15, 32, 3, "cpu", torch.float32)
    else:
        step_section(SD15, 64, 5, "cpu", torch.float32)
    if torch.cuda.is_available() and kernels.available():
        gpu_concat_section(repeat=20)
        step_section(SD15, 64, 20, "cuda", torch.float16)


if __name__ == "__main__":
    main()
