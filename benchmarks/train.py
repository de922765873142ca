"""Peak memory and time of one SD 1.5 UNet training step, with and without gradient checkpointing, minunet vs
diffusers in the same run.

    python benchmarks/train.py            # full-size SD 1.5 UNet, batch 1, 64 x 64 latents, CPU float32
    python benchmarks/train.py --quick    # the same structure at 0.3 x the width (96/192/384/384)
    python benchmarks/train.py --lora 8   # base frozen, a rank-8 LoRA on the attention projections trained

One step = forward, epsilon-MSE loss, backward into every parameter (a full fine-tune), or into a LoRA's only
(minunet.new_lora vs diffusers' add_adapter with a peft LoraConfig, same targets and rank); an optimizer's state
would add the same for both. Each case runs in a fresh process and measures three things:
- peak live tensor bytes: every allocation and free torch makes during the step, in order (the profiler's memory
  events), summed; the exact peak, independent of the allocator (the CPU twin of torch.cuda.max_memory_allocated);
- activations kept for backward: the bytes of the tensors autograd saves (saved-tensor hooks; weights excluded);
- peak RSS above the model (VmHWM reset to VmRSS before the step): what the machine sees, allocator included
  (glibc keeps freed blocks, so this is above the live peak and noisier).
`torch.utils.checkpoint` imports torch._dynamo (about 900 modules, ~100 MiB of RSS and 2 s) on its first call, and
diffusers imports it at import time: every case imports it before the baseline, or minunet's first checkpointed
step would be charged for an import diffusers paid earlier. Time: the median of --repeat further steps.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

CASE = r"""
import json, sys, time, torch
import torch._dynamo  # what torch.utils.checkpoint's first call imports (diffusers: at import); see the docstring
from pathlib import Path
impl, quick, ckpt, threads = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
sys.path.insert(0, sys.argv[5])
from train import config, status_kib, reset_peak_rss, live_peak_mib
cfg = config(quick)
if impl == "minunet":
    from minunet import UNet
    model = UNet(cfg)
    run = lambda x, t, c: model(x, t, c)
else:
    from diffusers import UNet2DConditionModel
    model = UNet2DConditionModel(**cfg.to_diffusers())
    run = lambda x, t, c: model(x, t, c).sample
model.train()
if ckpt:
    model.enable_gradient_checkpointing()
rank, repeat, targets = int(sys.argv[6]), int(sys.argv[7]), ["to_q", "to_k", "to_v", "to_out.0"]
weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # the base weights (not activations)
params = sum(p.numel() for p in model.parameters())
if rank == 0:  # full fine-tune: every weight trained
    trainable = list(model.parameters())
elif impl == "minunet":  # LoRA on the attention projections, base frozen
    from minunet.lora import new_lora
    model.requires_grad_(False)
    trainable = list(new_lora(model, rank, include=tuple(targets)).parameters())
else:
    from peft import LoraConfig
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    trainable = [p for p in model.parameters() if p.requires_grad]
weights |= {p.untyped_storage().data_ptr() for p in trainable}
clear = lambda: [setattr(p, "grad", None) for p in trainable]
x, t = torch.randn(1, 4, 64, 64), torch.tensor([500.0])
ctx, target = torch.randn(1, 77, cfg.context_dim), torch.randn(1, 4, 64, 64)
step = lambda: torch.nn.functional.mse_loss(run(x, t, ctx), target)
base = status_kib("VmRSS")
reset_peak_rss()
saved = {}  # storage -> bytes of every tensor autograd keeps for backward (an exact, allocator-free measure)
def pack(z):
    if z.untyped_storage().data_ptr() not in weights:
        saved[z.untyped_storage().data_ptr()] = z.untyped_storage().nbytes()
    return z
with torch.autograd.graph.saved_tensors_hooks(pack, lambda z: z):
    loss = step()
loss.backward()
peak = status_kib("VmHWM")
times = []
for _ in range(repeat):  # the median of `repeat` more steps (one step's time moves by 20% on a shared machine)
    clear()
    t0 = time.perf_counter()
    step().backward()
    times.append(time.perf_counter() - t0)
seconds = sorted(times)[len(times) // 2]
clear()
live = live_peak_mib(lambda: step().backward())
trained = sum(p.numel() for p in trainable)
print(json.dumps({"peak_mib": (peak - base) / 1024, "live_mib": live, "seconds": seconds, "params": params,
                  "trained": trained, "grad_mib": trained * 4 / 2**20, "saved_mib": sum(saved.values()) / 2**20, "loss": float(loss)}))
"""


def config(quick):
    from minunet import SD15

    if not quick:
        return SD15
    return dataclasses.replace(SD15, block_out_channels=(96, 192, 384, 384), num_heads=(8, 8, 8, 8))


def status_kib(field):
    """VmRSS (now) or VmHWM (peak) of this process in KiB (not ru_maxrss, which Linux carries over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss():
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := current RSS


def live_peak_mib(fn):
    """Run fn under the profiler's memory tracking -> the peak of the bytes torch holds during it, in MiB
    (allocations and frees as the profiler records them, in time order; what was held before fn counts as 0)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.3 x SD 1.5's width (96/192/384/384)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="steps timed after the measured one (median printed)")
    ap.add_argument("--lora", type=int, default=0, metavar="RANK",
                    help="train a rank-RANK LoRA on the attention projections (base frozen) instead of every weight")
    args = ap.parse_args()
    here = str(Path(__file__).parent)
    rows = []
    for ckpt in (False, True):
        for impl in ("minunet", "diffusers"):
            cmd = [sys.executable, "-c", CASE, impl, str(int(args.quick)), str(int(ckpt)), str(args.threads), here,
                   str(args.lora), str(args.repeat)]
            run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if run.returncode != 0:
                raise SystemExit(f"{impl} (checkpointing {ckpt}) failed:\n{run.stderr[-3000:]}")
            r = json.loads(run.stdout.strip().splitlines()[-1])
            rows.append((impl, ckpt, r))
            print(f"{impl:<10} checkpointing {'on ' if ckpt else 'off'}  peak live tensors {r['live_mib']:7.0f} MiB "
                  f"(gradients {r['grad_mib']:.0f} MiB of it)   kept for backward {r['saved_mib']:7.0f} MiB   "
                  f"peak RSS above model {r['peak_mib']:7.0f} MiB   step {r['seconds']:6.2f} s", flush=True)
    by = {(i, c): r for i, c, r in rows}
    for impl in ("minunet", "diffusers"):
        for key, what in (("live_mib", "live peak"), ("peak_mib", "RSS peak")):
            off, on = by[impl, False][key], by[impl, True][key]
            print(f"{impl:<10} checkpointing saves {off - on:8.0f} MiB of the {what} ({on / off:.2f} x without)")
    for ckpt in (False, True):
        a, b = by["minunet", ckpt], by["diffusers", ckpt]
        print(f"minunet / diffusers, checkpointing {'on ' if ckpt else 'off'}: live peak "
              f"{a['live_mib'] / b['live_mib']:.2f}, RSS peak {a['peak_mib'] / b['peak_mib']:.2f}, "
              f"time {a['seconds'] / b['seconds']:.2f}")
    trained = f"a rank-{args.lora} LoRA on to_q/to_k/to_v/to_out.0 trained" if args.lora else "every weight trained"
    print(f"({'quick: 96/192/384/384' if args.quick else 'full-size SD 1.5'}, {rows[0][2]['params'] / 1e6:.0f} M "
          f"parameters, {trained}, batch 1, 64 x 64 latents, CPU float32)")


if __name__ == "__main__":
    main()
