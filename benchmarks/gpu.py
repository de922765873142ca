"""The GPU benchmark: one run on one CUDA device (written for a lent H200), every figure into one report.

    python benchmarks/gpu.py --out DIR                    # on CUDA; --budget SECONDS (default 420) caps the run
    python benchmarks/gpu.py --out DIR --smoke            # on the CPU: every section's code path at tiny widths
    python benchmarks/gpu.py --out DIR --sections kernel,eager     # only some sections

Sections, in the order they run (the order of priority: a section that would not fit in what is left of the
budget prints "skipped: budget", and one that runs out mid-way is stopped and keeps what it measured):
 1. kernel   the fused FreeU Triton kernel (minunet.blocks.freeu.fused_freeu_concat, i.e. kernels.channel_mean +
             kernels.fused_decoder_input) against the pure-torch reference freeu_concat run in float64 on the same
             rounded inputs, at every decoder input FreeU touches (read off the models' own forward on the meta
             device, both conventions; the K-UNet has the official one only) of SD 1.5 at 512 px, SDXL at 1024 px,
             the video UNet at 320 x 576 with 16 frames (batch x frames = 32) and the K-UNet (x2 upscaler, 1024 px
             out), batch 2, in float16 / bfloat16 / float32, versions 1 and 2. Error = max |kernel - ref| / max |ref|
             with the output poisoned with NaN first; bounds 2e-3 (fp16), 1.6e-2 (bf16), 1e-5 (fp32).
 2. eager    it/s at batch 1 with classifier-free guidance, float16, full-size random weights, SD 1.5 (64 x 64
             latents, context (2, 77, 768)) and SDXL (128 x 128, context (2, 77, 2048), pooled text (2, 1280) and
             6 size ids each, as each library takes them), minunet vs diffusers (the same weights: minunet's default
             init loaded into diffusers' UNet2DConditionModel), plus DeepCache (interval 3, branch 0): minunet's own,
             and the DeepCache package's DeepCacheSDHelper on diffusers when it is installed.
 3. freeu    FreeU's cost in the same float16 step, SD 1.5 and SDXL: none / pure torch / fused kernel (minunet, both
             versions) and diffusers' enable_freeu (version 1, diffusers' mapping; the same factors for minunet's v1).
 4. offload  enable_model_cpu_offload: a full SD 1.5 pipeline (random weights, one diffusers folder both libraries
             load, float16), one 512 px image, 20 Euler steps, guidance 7.5: seconds per image and peak GPU memory
             (torch.cuda.max_memory_allocated over the run, less what was allocated before).
 5. compile  it/s as in 2 with each library's UNet under torch.compile (default mode), compile time apart.

What one "it" is: one denoising step of one image with classifier-free guidance, timed as
    out = unet(cat([x, x]), t, context[, SDXL's added conditioning]);  u, c = out.chunk(2)
    x = x + dt * (u + 7.5 * (c - u))                                        # the guidance combine + an Euler update
with the latents and the 0-dim timestep tensor on the GPU, no host synchronisation inside a run. A run is 12 such
steps (timesteps 999 .. 0) between CUDA events; runs of the two libraries alternate; it/s = 12 / median run time,
after warm-up runs. No text encoder, VAE or scheduler bookkeeping (section 4 times whole images).

Writes DIR/gpu.json (every figure, versions, GPU, timestamps) and DIR/gpu.md (the README's tables) after each
section, DIR/errors.log (tracebacks); prints the tables at the end.
"""
import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the package from the checkout; tests/pipes.py for the tokenizer

SECTIONS = ("kernel", "eager", "freeu", "offload", "compile")
ANCHORS = {"sd15": {"eager": 54.5, "compiled": 66.0}, "sdxl": {"eager": 14.9, "compiled": 18.5}}  # diffusers, H100
LABELS = {"sd15": "SD 1.5, 512 px", "sdxl": "SDXL, 1024 px"}
STEPS, GUIDANCE, DT = 12, 7.5, -0.01  # steps per timed run; CFG scale; the Euler step's sigma difference
# seconds a piece needs on an H200 (full) / on a 2-core CPU (smoke), checked against what is left of the budget
NEEDS = {"kernel": (60, 20), "eager sd15": (25, 10), "eager sdxl": (45, 10), "freeu sd15": (15, 5),
         "freeu sdxl": (40, 5), "offload": (60, 20), "compile sd15": (100, 40), "compile sdxl": (160, 40)}


class OutOfBudget(BaseException):
    """Raised by the budget's alarm; a BaseException, so that no library's `except Exception` swallows it."""


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------- the run

class Run:
    """Options, the budget's clock, the figures and the report files of one benchmark run."""

    def __init__(self, args):
        self.t0 = time.perf_counter()
        self.args, self.smoke, self.budget = args, args.smoke, args.budget
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        import torch

        self.cuda = torch.cuda.is_available() and not self.smoke
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.float16 if self.cuda else torch.float32  # fp16 convs are not what a CPU is for
        self.results = {"meta": {"started": now(), "smoke": self.smoke, "budget_s": self.budget}, "sections": {}}
        self.md = {}
        self.models = {}

    def left(self):
        return self.budget - (time.perf_counter() - self.t0)

    def fits(self, piece, entry=None):
        """Whether `piece` (a key of NEEDS) fits in what is left; if not, says so and records it."""
        if self.left() >= NEEDS[piece][1 if self.smoke else 0]:
            return True
        print(f"  {piece}: skipped: budget ({self.left():.0f} s left)", flush=True)
        if entry is not None:
            entry.setdefault("skipped", []).append(piece)
        return False

    def save(self):
        self.results["meta"].update(finished=now(), elapsed_s=round(time.perf_counter() - self.t0, 1))
        (self.out / "gpu.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "gpu.md").write_text(self.markdown())

    def markdown(self):
        m = self.results["meta"]
        head = (f"GPU benchmark ({'SMOKE RUN on the CPU, numbers meaningless' if self.smoke else m.get('gpu')}): "
                f"torch {m.get('torch')}, triton {m.get('triton')}, diffusers {m.get('diffusers')}, "
                f"CUDA {m.get('cuda')}; {m['started']} .. {m.get('finished')}")
        status = "\n".join(f"- {name}: {s.get('status')} ({s.get('seconds', 0):.0f} s)"
                           for name, s in self.results["sections"].items())
        return "\n\n".join([head, status] + [self.md[k] for k in SECTIONS if k in self.md]) + "\n"

    def log_error(self, name):
        with open(self.out / "errors.log", "a") as f:
            f.write(f"---- {name} {now()}\n{traceback.format_exc()}\n")


def versions(run):
    import torch

    meta = run.results["meta"]
    for name in ("torch", "triton", "diffusers", "transformers", "huggingface_hub", "accelerate", "DeepCache"):
        try:
            meta[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            meta[name] = None
    meta["torch"] = torch.__version__
    meta["cuda"] = torch.version.cuda
    meta["python"] = sys.version.split()[0]
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
        meta["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        meta["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)


@contextlib.contextmanager
def deadline(seconds):
    """Raise OutOfBudget in the main thread after `seconds` (at once if none are left)."""
    if seconds <= 0:
        raise OutOfBudget()

    def alarm(signum, frame):
        raise OutOfBudget()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def free(run, models=False):
    import torch

    if models:
        run.models.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_section(run, name, fn):
    """One section: skipped if it would not fit, stopped when the budget runs out, its errors caught; the report
    files rewritten after it."""
    entry = run.results["sections"].setdefault(name, {})
    print(f"\n== {name} ({run.left():.0f} s of budget left) ==", flush=True)
    first = next(k for k in NEEDS if k.startswith(name))
    if not run.fits(first):
        entry["status"] = "skipped: budget"
        return run.save()
    t0 = time.perf_counter()
    try:
        with deadline(run.left()):
            fn(run, entry)
        entry["status"] = "ok"
    except OutOfBudget:
        entry["status"] = "stopped: budget"
        print(f"{name}: stopped: budget (kept what was measured)", flush=True)
    except Exception as e:  # noqa: BLE001 - a section's failure must not stop the others
        entry["status"] = f"error: {type(e).__name__}: {e}"[:400]
        print(f"ERROR in section {name}: {type(e).__name__}: {str(e)[:300]} (traceback in errors.log)", flush=True)
        run.log_error(name)
    finally:
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        free(run)
        run.save()


# ------------------------------------------------------------------------------------------------ timing

def elapsed(run, fn):
    """Seconds one call of fn takes on the device: CUDA events around it, or the host clock on the CPU."""
    import torch

    if not run.cuda:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def interleaved(run, fns, warmup=2, repeat=5):
    """{name: median seconds of one call} over `repeat` rounds calling every fn in turn (order reversed every
    other round), after `warmup` calls each."""
    for fn in fns.values():
        for _ in range(warmup if not run.smoke else 1):
            fn()
    times = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(repeat if not run.smoke else 2):
        for name, fn in items if r % 2 == 0 else items[::-1]:
            times[name].append(elapsed(run, fn))
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------ the models

def unet_configs(smoke):
    """{name: (UNetConfig, latent size)} of the speed sections: the real SD 1.5 and SDXL, or tiny ones with the
    same structure and width ratios (--smoke)."""
    from minunet import SD15, SDXL

    if not smoke:
        return {"sd15": (SD15, 64), "sdxl": (SDXL, 128)}
    return {"sd15": (dataclasses.replace(SD15, block_out_channels=(32, 64, 128, 128), num_heads=(1, 2, 4, 4)), 16),
            "sdxl": (dataclasses.replace(SDXL, block_out_channels=(32, 64, 128), transformer_depth=(0, 1, 1),
                                         transformer_depth_mid=1, num_heads=(1, 2, 4)), 16)}


def step_inputs(cfg, latent, device, dtype, seed=0):
    """Latents (1, 4, h, w), the CFG batch's context (2, 77, C) and SDXL's added conditioning (or {}), random
    and non-zero; the timesteps of one run as 0-dim device tensors (and on the CPU, for DeepCacheSDHelper)."""
    import torch

    from minunet.cli.parity import random_inputs

    x, _, ctx, added = random_inputs(cfg, (latent, latent), batch=2, seed=seed, dtype=dtype, device=device)
    ts = torch.linspace(999, 0, STEPS).round()
    return SimpleNamespace(x=x[:1].contiguous(), ctx=ctx, added=added or {}, ts_cpu=ts,
                           ts=list(ts.to(device).unbind()))


def unet_call(lib, model, p):
    """model(x_in, t) -> the raw prediction, the way each library's UNet takes its arguments."""
    if lib == "minunet":
        return lambda x, t: model(x, t, p.ctx, **p.added)
    extra = {"added_cond_kwargs": p.added} if p.added else {}
    return lambda x, t: model(x, t, encoder_hidden_states=p.ctx, return_dict=False, **extra)[0]


def cfg_run(call, p, start=None):
    """One timed run: STEPS denoising steps of one image with classifier-free guidance (see the docstring)."""
    import torch

    if start is not None:
        start()
    x = p.x
    with torch.no_grad():
        for t in p.ts:
            uncond, cond = call(torch.cat([x, x]), t).chunk(2)
            x = x + DT * (uncond + GUIDANCE * (cond - uncond))
    return x


def build_pair(run, name):
    """(minunet UNet, diffusers UNet2DConditionModel) with the same random weights, on the device in the run's
    dtype, and their inputs; cached in run.models. Records build time and the two outputs' agreement."""
    if name in run.models:
        return run.models[name]
    import torch
    from diffusers import UNet2DConditionModel

    from minunet import UNet
    from minunet.loading.configs import to_diffusers

    t0 = time.perf_counter()
    cfg, latent = unet_configs(run.smoke)[name]
    torch.manual_seed(0)
    with torch.device(run.device):  # built where it runs: the default init costs milliseconds there
        ours = UNet(cfg).eval().to(run.dtype)
        theirs = UNet2DConditionModel(**to_diffusers(cfg)).eval().to(run.dtype)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    p = step_inputs(cfg, latent, run.device, run.dtype)
    p.ours, p.theirs, p.name = ours, theirs, name
    with torch.no_grad():
        a = unet_call("minunet", ours, p)(torch.cat([p.x, p.x]), p.ts[0]).float()
        b = unet_call("diffusers", theirs, p)(torch.cat([p.x, p.x]), p.ts[0]).float()
    p.parity = float((a - b).abs().max() / b.abs().max())
    p.finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    p.build_s = round(time.perf_counter() - t0, 1)
    print(f"  built {name}: {sum(q.numel() for q in ours.parameters()) / 1e9:.2f} B parameters in {p.build_s} s; "
          f"max |minunet - diffusers| / max |diffusers| = {p.parity:.1e}, finite: {p.finite}", flush=True)
    run.models[name] = p
    return p


# ------------------------------------------------------------------------------------ section 1: the kernel

def kernel_models(smoke):
    """{label: (model constructor, input shapes and keywords)} at the real sizes, or tiny ones (--smoke)."""
    from minunet import SD15, SDXL, KUNet, KUNetConfig, UNet, VideoUNet, VideoUNetConfig
    from minunet.cli.parity import sdxl_added_widths

    sd15, sdxl, video, kunet = SD15, SDXL, VideoUNetConfig(), KUNetConfig()
    size = dict(sd=64, xl=128, video=(16, 40, 72), k=128)  # latents: 512 px, 1024 px, 16 x 320 x 576, 1024 px out
    if smoke:  # the real structures at widths / 40 (8 norm groups): Triton's interpreter runs a program at a time
        sd15 = dataclasses.replace(sd15, block_out_channels=(8, 16, 32, 32), num_heads=(1, 1, 1, 1),
                                   norm_num_groups=8)
        sdxl = dataclasses.replace(sdxl, block_out_channels=(8, 16, 32), transformer_depth=(0, 1, 1),
                                   transformer_depth_mid=1, num_heads=(1, 1, 1), norm_num_groups=8)
        video = VideoUNetConfig(block_out_channels=(8, 16, 32, 32), head_size=8, norm_num_groups=8)
        kunet = KUNetConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=2, head_size=8, group_size=8)
        size = dict(sd=16, xl=16, video=(3, 10, 18), k=16)
    ids, pooled = sdxl_added_widths(sdxl)
    return {
        "SD 1.5, 512 px": (lambda: UNet(sd15), [(2, 4, size["sd"], size["sd"]), (2, 77, sd15.context_dim)], {}),
        "SDXL, 1024 px": (lambda: UNet(sdxl), [(2, 4, size["xl"], size["xl"]), (2, 77, sdxl.context_dim)],
                          {"text_embeds": (2, pooled), "time_ids": (2, ids)}),
        "video, 320 x 576, 16 frames": (lambda: VideoUNet(video), [(2, 4, *size["video"]), (2, 77, video.context_dim)],
                                        {}),
        "K-UNet (x2 upscaler), 1024 px": (lambda: KUNet(kunet), [(2, 8, size["k"], size["k"]),
                                                                 (2, 77, kunet.context_dim)],
                                          {"timestep_cond": (2, kunet.time_cond_dim)}),
    }


def freeu_sites(make, shapes, kwargs, mapping):
    """[(h shape, hs shape, Stage)] of every decoder input FreeU touches, in forward order: the model's own forward
    on the meta device (no memory, no arithmetic) with its decoder_input replaced by a spy."""
    import torch

    from minunet.blocks import unet_blocks
    from minunet.freeu import FreeU
    from minunet.models import kunet

    seen = []

    def spy(h, hs, stage):
        if stage is not None:
            seen.append((tuple(h.shape), tuple(hs.shape), stage))
        return torch.cat([h, hs], dim=1)
    with torch.device("meta"), torch.no_grad(), mock.patch.object(unet_blocks, "decoder_input", spy), \
            mock.patch.object(kunet, "decoder_input", spy):
        model = make()
        model.enable_freeu(FreeU(s1=0.9, s2=0.2, b1=1.3, b2=1.4, mapping=mapping))
        model(torch.randn(shapes[0]), torch.tensor(500.0), torch.randn(shapes[1]),
              **{k: torch.randn(v) for k, v in kwargs.items()})
    return seen


def kernel_rows(smoke):
    """[{model, h, hs, conventions, b, s}] with each distinct (h, hs) pair of a model once."""
    rows = {}
    for label, (make, shapes, kwargs) in kernel_models(smoke).items():
        for mapping in ("official", "diffusers"):
            if label.startswith("K-UNet") and mapping == "diffusers":
                continue  # diffusers' enable_freeu does nothing on the K-UNet; minunet refuses that mapping there
            for h, hs, stage in freeu_sites(make, shapes, kwargs, mapping):
                row = rows.setdefault((label, h, hs), dict(model=label, h=h, hs=hs, conventions=[], b=stage.b,
                                                           s=stage.s, results={}))
                if mapping not in row["conventions"]:
                    row["conventions"].append(mapping)
    rows = list(rows.values())
    if smoke:  # two decoder inputs a model, one of them at odd or small sizes where there are some
        rows = [r for label in kernel_models(True) for r in [x for x in rows if x["model"] == label][-2:]]
    return rows


def kernel_error(h_shape, hs_shape, b, s, dtype, version, device, seed):
    """(max |kernel - ref| / max |ref|, ||kernel - ref|| / ||ref||, all written and finite) for fresh random
    inputs; ref = freeu_concat in float64 on the same rounded inputs; the output's memory is poisoned first."""
    import torch

    from minunet.blocks.freeu import freeu_concat, fused_freeu_concat

    g = torch.Generator(device).manual_seed(seed)
    h = torch.randn(h_shape, generator=g, device=device).to(dtype)
    hs = torch.randn(hs_shape, generator=g, device=device).to(dtype)
    out_shape = (h_shape[0], h_shape[1] + hs_shape[1], *h_shape[2:])
    poison = torch.full(out_shape, float("nan"), dtype=dtype, device=device)
    del poison  # the caching allocator hands the kernel's torch.empty this NaN-filled block again
    out = fused_freeu_concat(h, hs, b=b, s=s, version=version).double()
    ref = freeu_concat(h.double(), hs.double(), b=b, s=s, version=version)
    diff = (out - ref).nan_to_num(float("inf"))
    return (float(diff.abs().max() / ref.abs().max()), float(diff.norm() / ref.norm()),
            bool(torch.isfinite(out).all()))


def kernel_section(run, entry):
    import torch

    from minunet import kernels

    if not kernels.available():
        raise RuntimeError("triton is not installed: the fused kernel cannot run")
    if run.cuda == kernels.interpreting():
        raise RuntimeError(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')} does not suit {run.device}")
    rows = kernel_rows(run.smoke)
    entry["rows"] = rows
    bounds = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5}
    entry["bounds"] = bounds
    print(f"  {len(rows)} distinct decoder inputs x 3 dtypes x 2 versions", flush=True)
    device = run.device
    for d, name in enumerate(bounds):
        dtype = getattr(torch, name)
        for i, row in enumerate(rows):
            if run.left() < 10:
                entry.setdefault("skipped", []).append(f"{name} from row {i}")
                print(f"  {name}: skipped: budget from row {i}", flush=True)
                break
            for version in (1, 2):
                rel, norm, finite = kernel_error(row["h"], row["hs"], row["b"], row["s"], dtype, version, device,
                                                 seed=1000 * d + 10 * i + version)
                ok = finite and rel <= bounds[name]
                row["results"][f"{name} v{version}"] = {"max_rel": rel, "norm_rel": norm, "finite": finite, "ok": ok}
        done = [r for row in rows for k, r in row["results"].items() if k.startswith(name)]
        print(f"  {name}: {sum(r['ok'] for r in done)}/{len(done)} pass, worst max-relative error "
              f"{max((r['max_rel'] for r in done), default=float('nan')):.1e} (bound {bounds[name]:.1e})", flush=True)
        run.md["kernel"] = kernel_table(rows, bounds)
        run.save()
    checked = [r for row in rows for r in row["results"].values()]
    entry["passed"], entry["checked"] = sum(r["ok"] for r in checked), len(checked)


def kernel_table(rows, bounds):
    cols = [f"{name} v{v}" for name in bounds for v in (1, 2)]
    lines = ["### 1. Fused FreeU kernel vs the pure-torch reference (float64), max |kernel - ref| / max |ref|", "",
             "| model | h | skip | conventions | b, s | " + " | ".join(cols) + " |",
             "|---|---|---|---|---|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            r = row["results"].get(c)
            cells.append("-" if r is None else f"{r['max_rel']:.1e}" + ("" if r["ok"] else " **FAIL**"))
        lines.append(f"| {row['model']} | {'x'.join(map(str, row['h']))} | {'x'.join(map(str, row['hs']))} | "
                     f"{' + '.join(row['conventions'])} | {row['b']}, {row['s']} | " + " | ".join(cells) + " |")
    checked = [r for row in rows for r in row["results"].values()]
    lines += ["", f"{sum(r['ok'] for r in checked)} / {len(checked)} pass; bounds " +
              ", ".join(f"{k} {v:.1e}" for k, v in bounds.items()) + "; output poisoned with NaN before each call; "
              "fresh random inputs per check; batch 2 (the video UNet: 2 x 16 frames)."]
    return "\n".join(lines)


# -------------------------------------------------------------------------- section 2: eager it/s, DeepCache

def deepcache_helper(p):
    """The DeepCache package's DeepCacheSDHelper (interval 3, branch 0) on the diffusers UNet, or None without the
    package. It reads the step from pipe.scheduler.timesteps, so it gets the run's timesteps there."""
    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError:
        return None
    helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=p.theirs, scheduler=SimpleNamespace(timesteps=p.ts_cpu)))
    helper.set_params(cache_interval=3, cache_branch_id=0)
    return helper


def drop_wrappers(module):
    """DeepCacheSDHelper.disable leaves the original forwards as instance attributes: take them off."""
    for m in module.modules():
        m.__dict__.pop("forward", None)


def time_deepcache(run, p):
    """{'minunet DeepCache': s, ['diffusers DeepCache': s]} per run of STEPS steps (full steps 0, 3, 6, 9)."""
    from minunet.models.deepcache import disable_deepcache, enable_deepcache

    cache = enable_deepcache(p.ours, cache_interval=3, cache_branch_id=0)
    helper = deepcache_helper(p)
    try:
        fns = {"minunet DeepCache": lambda: cfg_run(unet_call("minunet", p.ours, p), p, start=cache.start)}
        if helper is not None:
            helper.enable()
            fns["diffusers DeepCache"] = lambda: cfg_run(unet_call("diffusers", p.theirs, p), p)
        return interleaved(run, fns)
    finally:
        disable_deepcache(p.ours)
        if helper is not None:
            helper.disable()
            drop_wrappers(p.theirs)


def eager_section(run, entry):
    for name in ("sd15", "sdxl"):
        if not run.fits(f"eager {name}", entry):
            continue
        p = build_pair(run, name)
        res = entry[name] = {"build_s": p.build_s, "parity_max_rel": p.parity, "finite": p.finite}
        times = interleaved(run, {lib: (lambda lib=lib, m=m: cfg_run(unet_call(lib, m, p), p))
                                  for lib, m in (("minunet", p.ours), ("diffusers", p.theirs))})
        res.update({f"{k} it/s": STEPS / v for k, v in times.items()})
        print(f"  {name}: minunet {res['minunet it/s']:.2f} it/s, diffusers {res['diffusers it/s']:.2f} it/s "
              f"(H100 anchor {ANCHORS[name]['eager']})", flush=True)
        run.md["eager"] = eager_table(entry)
        run.save()
        res.update({f"{k} it/s": STEPS / v for k, v in time_deepcache(run, p).items()})
        print("  " + ", ".join(f"{k} {v:.2f} it/s" for k, v in res.items() if "DeepCache" in k), flush=True)
        run.md["eager"] = eager_table(entry)


def eager_table(entry):
    lines = ["### 2. it/s, batch 1 with CFG (UNet at batch 2 + guidance + Euler update), float16, eager", "",
             "| model | library | it/s | ms / step | DeepCache (3, 0) it/s | DeepCache speed-up | "
             "diffusers on H100 (published) |", "|---|---|---|---|---|---|---|"]
    for name in ("sd15", "sdxl"):
        res = entry.get(name)
        if not res:
            continue
        for lib in ("minunet", "diffusers"):
            its, dc = res.get(f"{lib} it/s"), res.get(f"{lib} DeepCache it/s")
            lines.append(f"| {LABELS[name]} | {lib} | {fmt(its)} | {fmt(its and 1e3 / its, 1)} | {fmt(dc)} | "
                         f"{fmt(dc and its and dc / its)}{'x' if dc and its else ''} | {ANCHORS[name]['eager']} |")
    lines += ["", "Same random weights in both (minunet's default init loaded into UNet2DConditionModel); "
              f"{STEPS}-step runs between CUDA events, libraries alternating, median. DeepCache: minunet's own; "
              "diffusers through the DeepCache package's DeepCacheSDHelper (its per-step .item() included)."]
    ratios = [f"{LABELS[n]} {entry[n]['minunet it/s'] / entry[n]['diffusers it/s']:.2f}" for n in ("sd15", "sdxl")
              if n in entry and "diffusers it/s" in entry[n]]
    if ratios:
        lines.append("minunet / diffusers eager it/s: " + ", ".join(ratios) + ".")
    return "\n".join(lines)


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------ section 3: FreeU's cost

FREEU_PRESETS = {"sd15": ("sd15-diffusers", "sd15"), "sdxl": ("sdxl-sweep", "sdxl")}  # (v1 diffusers mapping, v2)


def freeu_variants(p):
    """{variant: fn running one CFG run} for minunet (none, pure torch and fused, versions 1 and 2) and diffusers
    (none, enable_freeu with the version 1 factors)."""
    from minunet import kernels
    from minunet.freeu import FreeU

    v1, v2 = (FreeU.preset(n) for n in FREEU_PRESETS[p.name])
    ours, theirs = unet_call("minunet", p.ours, p), unet_call("diffusers", p.theirs, p)

    def minunet(freeu, fused=True):
        def fn():
            p.ours.enable_freeu(freeu) if freeu is not None else p.ours.disable_freeu()
            with contextlib.ExitStack() as stack:
                if not fused:  # decoder_input takes the pure-torch path when it sees no triton
                    stack.enter_context(mock.patch.object(kernels, "available", lambda: False))
                return cfg_run(ours, p)
        return fn

    def diffusers(on):
        def fn():
            if on:
                p.theirs.enable_freeu(s1=v1.s1, s2=v1.s2, b1=v1.b1, b2=v1.b2)
            else:
                p.theirs.disable_freeu()
            return cfg_run(theirs, p)
        return fn
    return {"minunet none": minunet(None), "minunet torch v1": minunet(v1, False), "minunet fused v1": minunet(v1),
            "minunet torch v2": minunet(v2, False), "minunet fused v2": minunet(v2),
            "diffusers none": diffusers(False), "diffusers enable_freeu v1": diffusers(True)}


def freeu_section(run, entry):
    from minunet import kernels

    entry["fused_on_this_device"] = run.cuda and kernels.available()
    for name in ("sd15", "sdxl"):
        if not run.fits(f"freeu {name}", entry):
            continue
        p = build_pair(run, name)
        try:
            times = interleaved(run, freeu_variants(p))
        finally:
            p.ours.disable_freeu()
            p.theirs.disable_freeu()
        res = entry[name] = {"ms_per_step": {k: 1e3 * v / STEPS for k, v in times.items()},
                             "presets": FREEU_PRESETS[name]}
        base = {lib: res["ms_per_step"][f"{lib} none"] for lib in ("minunet", "diffusers")}
        res["adds_percent"] = {k: 100 * (v / base[k.split()[0]] - 1) for k, v in res["ms_per_step"].items()
                               if not k.endswith("none")}
        print(f"  {name}: " + ", ".join(f"{k} {v:+.1f}%" for k, v in res["adds_percent"].items()), flush=True)
        run.md["freeu"] = freeu_table(entry)
        run.save()


def freeu_table(entry):
    lines = ["### 3. FreeU's cost in a whole float16 step (batch 2 UNet + CFG + Euler), same run as section 2", "",
             "| model | variant | ms / step | FreeU adds |", "|---|---|---|---|"]
    for name in ("sd15", "sdxl"):
        res = entry.get(name)
        if not res:
            continue
        for k, ms in res["ms_per_step"].items():
            adds = res["adds_percent"].get(k)
            lines.append(f"| {LABELS[name]} | {k} | {ms:.2f} | {'-' if adds is None else f'{adds:+.1f}%'} |")
    lines += ["", "v1: presets sd15-diffusers / sdxl-sweep (version 1, diffusers' mapping: the factors given to "
              "diffusers' enable_freeu too); v2: presets sd15 / sdxl (version 2, official mapping). torch: "
              "minunet's pure-torch freeu_concat; fused: the Triton kernel"
              + ("." if entry.get("fused_on_this_device") else " (NOT on this device: same path as torch).")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- section 4: CPU offload

def offload_folder(folder, run):
    """A StableDiffusionPipeline folder both libraries load: SD 1.5's official configs with random weights (the
    modules' default init, built on the GPU, saved in float16), or the tests' tiny pipeline (--smoke)."""
    import torch

    import pipes

    if run.smoke:
        return pipes.sd_pipeline(folder)
    pipes.full_sd15_pipeline(folder, run.device, torch.float16)


def offload_pipes(folder, run):
    """(minunet Pipeline, diffusers StableDiffusionPipeline) from `folder`, each with its enable_model_cpu_offload."""
    from diffusers import StableDiffusionPipeline

    from minunet.pipelines.image import Pipeline

    ours = Pipeline.from_pretrained(folder, dtype=run.dtype, device="cpu")
    ours.enable_model_cpu_offload(run.device)
    theirs = StableDiffusionPipeline.from_pretrained(folder, dtype=run.dtype, safety_checker=None,
                                                     requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    theirs.enable_model_cpu_offload(device=run.device)
    return ours, theirs


def one_image(run, lib, pipe, steps):
    """(seconds, peak GPU bytes above what was allocated before) of one image."""
    import torch

    size = 512 if not run.smoke else 64
    kw = dict(prompt="a red fox in the snow", negative_prompt="blurry", height=size, width=size,
              num_inference_steps=steps, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0),
              output_type="pt")
    if lib == "minunet":
        kw.update(progress=False, sampler="euler")
    base = 0
    if run.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    pipe(**kw)
    if run.cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) if run.cuda else None


def offload_section(run, entry):
    free(run, models=True)
    steps = 20 if not run.smoke else 3
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        offload_folder(Path(tmp), run)
        pipelines = dict(zip(("minunet", "diffusers"), offload_pipes(Path(tmp), run)))
        entry["setup_s"] = round(time.perf_counter() - t0, 1)
        print(f"  SD 1.5 pipeline folder written and loaded by both in {entry['setup_s']} s", flush=True)
        for lib, pipe in pipelines.items():
            one_image(run, lib, pipe, 2)  # warm-up: kernels chosen, hooks placed, weights paged in
        runs = {lib: [] for lib in pipelines}
        for r in range(3 if not run.smoke else 1):
            for lib, pipe in (pipelines.items() if r % 2 == 0 else list(pipelines.items())[::-1]):
                runs[lib].append(one_image(run, lib, pipe, steps))
    for lib, v in runs.items():
        entry[lib] = {"s_per_image": statistics.median(s for s, _ in v), "runs": v, "steps": steps,
                      "peak_gib": None if v[0][1] is None else max(b for _, b in v) / 2**30}
        print(f"  {lib}: {entry[lib]['s_per_image']:.2f} s / image, peak {fmt(entry[lib]['peak_gib'])} GiB", flush=True)
    run.md["offload"] = offload_table(entry)


def offload_table(entry):
    lines = ["### 4. enable_model_cpu_offload, SD 1.5, one 512 px image, float16", "",
             "| library | s / image | peak GPU memory (GiB) | steps |", "|---|---|---|---|"]
    for lib in ("minunet", "diffusers"):
        r = entry.get(lib)
        if r:
            lines.append(f"| {lib} | {r['s_per_image']:.2f} | {fmt(r['peak_gib'])} | {r['steps']} |")
    lines += ["", "Text encoder, UNet (Euler, guidance 7.5, CFG batch 2) and VAE decode, output as a tensor; median "
              "of 3 interleaved runs after a 2-step warm-up; peak = torch.cuda.max_memory_allocated during the run "
              "less what was allocated before it."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ section 5: torch.compile it/s

def compile_section(run, entry):
    import torch

    free(run, models=True)
    for name in ("sd15", "sdxl"):
        res, compiled = entry.setdefault(name, {}), {}
        for lib in ("minunet", "diffusers"):
            if not run.fits(f"compile {name}", entry):
                continue
            p = build_pair(run, name)
            model = torch.compile(p.ours if lib == "minunet" else p.theirs, backend=run.args.compile_backend)
            t0 = time.perf_counter()
            cfg_run(unet_call(lib, model, p), p)  # the first run compiles
            if run.cuda:
                torch.cuda.synchronize()
            res[f"{lib} compile_s"] = round(time.perf_counter() - t0, 1)
            compiled[lib] = model
            print(f"  {name} {lib}: compiled in {res[f'{lib} compile_s']} s", flush=True)
            run.md["compile"] = compile_table(entry, run.results["sections"].get("eager", {}), run.args.compile_backend)
            run.save()
        if compiled:
            p = run.models[name]
            times = interleaved(run, {lib: (lambda lib=lib, m=m: cfg_run(unet_call(lib, m, p), p))
                                      for lib, m in compiled.items()})
            res.update({f"{lib} it/s": STEPS / v for lib, v in times.items()})
            print("  " + ", ".join(f"{name} {lib} compiled {STEPS / v:.2f} it/s" for lib, v in times.items()),
                  flush=True)
        del compiled
        free(run, models=True)
        torch._dynamo.reset()
        run.md["compile"] = compile_table(entry, run.results["sections"].get("eager", {}), run.args.compile_backend)
        run.save()


def compile_table(entry, eager, backend):
    lines = [f"### 5. it/s under torch.compile (backend {backend}, default mode), same step as section 2 "
             f"(compile s: the first {STEPS}-step run)", "",
             "| model | library | compile s | it/s | vs eager | diffusers on H100 (published) |",
             "|---|---|---|---|---|---|"]
    for name in ("sd15", "sdxl"):
        res = entry.get(name) or {}
        for lib in ("minunet", "diffusers"):
            if f"{lib} compile_s" not in res:
                continue
            its, before = res.get(f"{lib} it/s"), eager.get(name, {}).get(f"{lib} it/s")
            lines.append(f"| {LABELS[name]} | {lib} | {res[f'{lib} compile_s']} | {fmt(its)} | "
                         f"{fmt(its and before and its / before)}{'x' if its and before else ''} | "
                         f"{ANCHORS[name]['compiled']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main

RUNNERS = {"kernel": kernel_section, "eager": eager_section, "freeu": freeu_section, "offload": offload_section,
           "compile": compile_section}


def import_weights():
    """minunet.weights is the checkout's weights/ folder, mapped there by pyproject.toml's package-dir, and
    `import minunet` needs it: from a checkout that was never installed (PYTHONPATH=checkout, as on the device)
    register it from there before minunet is imported. (The checkout's minunet is the one imported: ROOT is first
    on sys.path.)"""
    import importlib.util

    if "minunet.weights" not in sys.modules and not (ROOT / "minunet" / "weights").exists():
        spec = importlib.util.spec_from_file_location("minunet.weights", ROOT / "weights" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "weights")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["minunet.weights"] = module
        spec.loader.exec_module(module)
    import minunet

    minunet.weights = sys.modules["minunet.weights"]


def quiet():
    """No progress bars or dtype advice from diffusers / transformers in the log (the device returns its tail)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu.json, gpu.md and errors.log")
    ap.add_argument("--budget", type=float, default=420, help="seconds for the whole run (default 420)")
    ap.add_argument("--smoke", action="store_true", help="on the CPU: tiny widths, float32, Triton's interpreter")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; 1 with --smoke)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; aot_eager with --smoke: inductor on a CPU takes minutes)")
    args = ap.parse_args()
    args.compile_backend = args.compile_backend or ("aot_eager" if args.smoke else "inductor")
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if args.smoke:  # read when the kernel module is first imported: before any of minunet's imports
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    import torch

    torch.set_num_threads(args.threads or (1 if args.smoke else torch.get_num_threads()))
    import_weights()
    quiet()
    run = Run(args)
    versions(run)
    meta = run.results["meta"]
    print(f"torch {meta['torch']} (CUDA {meta['cuda']}), triton {meta['triton']}, diffusers {meta['diffusers']}, "
          f"transformers {meta['transformers']}, DeepCache {meta['DeepCache']}; device: {meta.get('gpu', 'cpu')}; "
          f"budget {args.budget:.0f} s{'; SMOKE RUN' if args.smoke else ''}", flush=True)
    if not run.cuda and not args.smoke:
        print("no CUDA device: run with --smoke on a CPU", flush=True)
        return 2
    for name in args.sections.split(","):
        run_section(run, name, RUNNERS[name])
    print("\n" + "=" * 100 + "\n" + run.markdown(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
