"""Seconds per image, minunet vs diffusers, in one run: float32, the auto dtype, DeepCache 3 and 5, ToMe 0.5, all
together; and what each costs: the final latents' difference from the same library's uncached float32 run.

    python benchmarks/speed.py                # full SD 1.5, 512 px, 25 steps (about 30 min on a 2-core CPU)
    python benchmarks/speed.py --quick        # the tests' tiny SD pipeline, 128 px, 6 steps: checks the script
    python benchmarks/speed.py --layouts      # the full SD 1.5 UNet's forward alone (batch 2, 64 x 64 latents):
                                              # float32 / bfloat16 x contiguous / channels_last, what "auto" picks

Both libraries load one folder in the diffusers layout holding SD 1.5's official configs (UNet, VAE, CLIP text
encoder, tokenizer) with random weights (the modules' default init, seed 0), Euler, guidance 7.5, one image with a
negative prompt. diffusers runs its own way of each setting: dtype=bfloat16 (float16 on CUDA) for the auto
dtype, DeepCacheSDHelper (uniform, branch 0) for DeepCache, tomesd.apply_patch(ratio=0.5, use_rand=False) for ToMe.
Runs are interleaved (minunet, diffusers; the next setting diffusers first) so that load on the machine hits both
alike; each pipeline and dtype is warmed up by a 1-step run first. Ratios: minunet / diffusers in the same setting,
and minunet / diffusers' default (float32, nothing on). Latent difference: ||x - x_f32|| / ||x_f32||.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import pipes  # noqa: E402

from minunet.pipelines.image import Pipeline  # noqa: E402

# setting -> (auto dtype?, DeepCache interval or None, ToMe ratio or None)
SETTINGS = {"float32": (False, None, None), "auto dtype": (True, None, None), "DeepCache 3": (True, 3, None),
            "DeepCache 5": (True, 5, None), "ToMe 0.5": (True, None, 0.5), "all together": (True, 3, 0.5)}


def theirs_pipe(folder, dtype):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device())


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def reduced_dtype():
    return torch.float16 if torch.cuda.is_available() else torch.bfloat16


class Runner:
    """One library's pipeline and how it switches DeepCache / ToMe on and off; run() -> (seconds, final latents)."""

    def __init__(self, name, pipe, kw):
        self.name, self.pipe, self.kw, self.undo = name, pipe, kw, []

    def set(self, interval, ratio):
        for undo in reversed(self.undo):
            undo()
        self.undo = []
        if self.name == "minunet":
            if interval is not None:
                self.pipe.enable_deepcache(interval, 0)
                self.undo.append(self.pipe.disable_deepcache)
            if ratio is not None:
                self.pipe.enable_tome(ratio)
                self.undo.append(self.pipe.disable_tome)
        else:
            if interval is not None:
                from DeepCache import DeepCacheSDHelper

                helper = DeepCacheSDHelper(pipe=self.pipe)
                helper.set_params(cache_interval=interval, cache_branch_id=0)
                helper.enable()
                self.undo.append(helper.disable)
            if ratio is not None:
                import tomesd

                tomesd.apply_patch(self.pipe, ratio=ratio, use_rand=False)
                self.undo.append(lambda: tomesd.remove_patch(self.pipe))

    def run(self, steps=None):
        kw = dict(self.kw, num_inference_steps=steps or self.kw["num_inference_steps"])
        final = {}
        if self.name == "minunet":
            def keep(i, t, x):
                final["x"] = x
            kw.update(callback=keep, progress=False)
        else:
            def keep(pipe, i, t, tensors):
                final["x"] = tensors["latents"]
                return tensors
            kw.update(callback_on_step_end=keep)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.pipe(**kw, generator=torch.Generator().manual_seed(0))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0, final["x"].float().cpu()


def load(folder, auto, kw):
    ours = Pipeline.from_pretrained(folder, dtype="auto" if auto else torch.float32, device=device())
    theirs = theirs_pipe(folder, reduced_dtype() if auto else torch.float32)
    runners = [Runner("minunet", ours, kw), Runner("diffusers", theirs, kw)]
    for r in runners:
        r.run(steps=1)  # warm-up: first-call kernel selection, page-in of the weights
    return runners


def measure(folder, kw, repeat):
    """{setting: {library: (seconds, latents)}}, interleaved; the float32 pipelines are let go before the auto ones."""
    results, order = {}, 0
    for auto in (False, True):
        runners = load(folder, auto, kw)
        for setting, (a, interval, ratio) in SETTINGS.items():
            if a != auto:
                continue
            for r in runners:
                r.set(interval, ratio)
            runs = {r.name: [] for r in runners}
            for _ in range(repeat):
                for r in runners[::-1] if order % 2 else runners:
                    runs[r.name].append(r.run())
                order += 1
            results[setting] = {name: min(v, key=lambda s: s[0]) for name, v in runs.items()}
            print(setting, {k: f"{v[0]:.1f} s" for k, v in results[setting].items()}, flush=True)
        for r in runners:
            r.set(None, None)
        del runners
    return results


def table(results):
    ref = {name: results["float32"][name][1] for name in ("minunet", "diffusers")}
    default = results["float32"]["diffusers"][0]
    rows = ["| setting | minunet s/image | diffusers s/image | minunet / diffusers | minunet / diffusers float32 | "
            "latent diff minunet | latent diff diffusers |", "|---|---|---|---|---|---|---|"]
    for setting, r in results.items():
        (a, xa), (b, xb) = r["minunet"], r["diffusers"]
        diff = [float((x - ref[n]).norm() / ref[n].norm()) for n, x in (("minunet", xa), ("diffusers", xb))]
        rows.append(f"| {setting} | {a:.1f} | {b:.1f} | {a / b:.2f} | {a / default:.2f} | {diff[0]:.3f} | "
                    f"{diff[1]:.3f} |")
    return "\n".join(rows)


def layouts(repeat):
    """minunet's full SD 1.5 UNet forward, batch 2 at 64 x 64, in float32 / bfloat16 x contiguous / channels_last,
    interleaved, median of `repeat`; the difference from float32 as ||out - out_f32|| / ||out_f32||."""
    from minunet import SD15 as CONFIG, UNet

    torch.manual_seed(0)
    model = UNet(CONFIG).eval()
    x, t, ctx = torch.randn(2, 4, 64, 64), torch.tensor([999.0, 500.0]), torch.randn(2, 77, 768)
    cases = [(dtype, fmt) for dtype in (torch.float32, torch.bfloat16)
             for fmt in (torch.contiguous_format, torch.channels_last)]
    times, outs = {c: [] for c in cases}, {}
    with torch.inference_mode():
        for rep in range(repeat + 1):  # the first round is a warm-up
            for dtype, fmt in cases:
                model.to(dtype=dtype, memory_format=fmt)
                args = (x.to(dtype=dtype, memory_format=fmt), t, ctx.to(dtype))
                t0 = time.perf_counter()
                outs[dtype, fmt] = model(*args).float()
                if rep:
                    times[dtype, fmt].append(time.perf_counter() - t0)
    ref = outs[torch.float32, torch.contiguous_format]
    base = sorted(times[cases[0]])[repeat // 2]
    for (dtype, fmt), v in times.items():
        median = sorted(v)[repeat // 2]
        print(f"{str(dtype)[6:]:<9} {'channels_last' if fmt == torch.channels_last else 'contiguous':<14} "
              f"{median:6.2f} s  ({base / median:.2f}x float32 contiguous)  difference "
              f"{float((outs[dtype, fmt] - ref).norm() / ref.norm()):.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=1, help="runs per library and setting (the fastest is kept)")
    ap.add_argument("--quick", action="store_true", help="the tests' tiny SD pipeline, 128 px, 6 steps")
    ap.add_argument("--layouts", action="store_true", help="the UNet forward alone in each dtype and layout")
    args = ap.parse_args()
    if args.layouts:
        return layouts(max(args.repeat, 3))
    steps, size = (6, 128) if args.quick else (args.steps, args.size)
    print(f"torch {torch.__version__}, {device()}, {torch.get_num_threads()} threads, "
          f"{'tiny SD' if args.quick else 'full SD 1.5'}, {size} px, {steps} steps, Euler, guidance 7.5")
    kw = dict(prompt="a red fox in the snow", negative_prompt="blurry", num_inference_steps=steps, height=size,
              width=size, guidance_scale=7.5)
    with tempfile.TemporaryDirectory() as tmp:
        (pipes.sd_pipeline if args.quick else pipes.full_sd15_pipeline)(Path(tmp))
        results = measure(Path(tmp), kw, args.repeat)
    print(table(results))
    m, d = results, results["float32"]["diffusers"][0]
    print(f"targets: minunet's default (auto dtype) / diffusers' default = {m['auto dtype']['minunet'][0] / d:.2f} "
          f"(<= 0.6); with DeepCache 3 = {m['DeepCache 3']['minunet'][0] / d:.2f} (<= 0.35)")


if __name__ == "__main__":
    main()
