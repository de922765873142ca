"""Peak memory and time of one SD 1.5 UNet training step, with and without gradient checkpointing, minunet vs
diffusers in the same run.

    python benchmarks/train.py            # full-size SD 1.5 UNet, batch 1, 64 x 64 latents, CPU float32
    python benchmarks/train.py --quick    # the same structure at 0.3 x the width (96/192/384/384)

One step = forward, epsilon-MSE loss, backward into every parameter (a full fine-tune; an optimizer's state
would add the same for both). Each case runs in a fresh process: the model and inputs are built, the peak RSS
(VmHWM) is reset to the current RSS, then the step runs; the figure is the peak above that baseline, i.e. the
activations and gradients the step allocates (CPU allocations are invisible to torch.cuda's counters). RSS
depends on the allocator (glibc keeps freed blocks), so the exact figure is printed too: the bytes of the
activations autograd keeps for backward (saved-tensor hooks; the weights excluded).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASE = r"""
import json, sys, time, torch
from pathlib import Path
impl, quick, ckpt, threads = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
sys.path.insert(0, sys.argv[5])
from train import config, status_kib, reset_peak_rss
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
x, t = torch.randn(1, 4, 64, 64), torch.tensor([500.0])
ctx, target = torch.randn(1, 77, cfg.context_dim), torch.randn(1, 4, 64, 64)
base = status_kib("VmRSS")
reset_peak_rss()
saved = {}  # storage -> bytes of every tensor autograd keeps for backward (an exact, allocator-free measure)
params = {p.untyped_storage().data_ptr() for p in model.parameters()}
def pack(z):
    if z.untyped_storage().data_ptr() not in params:
        saved[z.untyped_storage().data_ptr()] = z.untyped_storage().nbytes()
    return z
t0 = time.perf_counter()
with torch.autograd.graph.saved_tensors_hooks(pack, lambda z: z):
    loss = torch.nn.functional.mse_loss(run(x, t, ctx), target)
loss.backward()
seconds = time.perf_counter() - t0
peak = status_kib("VmHWM")
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"peak_mib": (peak - base) / 1024, "seconds": seconds, "params": params,
                  "grad_mib": params * 4 / 2**20, "saved_mib": sum(saved.values()) / 2**20, "loss": float(loss)}))
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.3 x SD 1.5's width (96/192/384/384)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    here = str(Path(__file__).parent)
    rows = []
    for ckpt in (False, True):
        for impl in ("minunet", "diffusers"):
            cmd = [sys.executable, "-c", CASE, impl, str(int(args.quick)), str(int(ckpt)), str(args.threads), here]
            run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if run.returncode != 0:
                raise SystemExit(f"{impl} (checkpointing {ckpt}) failed:\n{run.stderr[-3000:]}")
            r = json.loads(run.stdout.strip().splitlines()[-1])
            rows.append((impl, ckpt, r))
            print(f"{impl:<10} checkpointing {'on ' if ckpt else 'off'}  peak above model {r['peak_mib']:8.0f} MiB "
                  f"(gradients {r['grad_mib']:.0f} MiB of it)   kept for backward {r['saved_mib']:7.0f} MiB   "
                  f"step {r['seconds']:6.2f} s", flush=True)
    by = {(i, c): r for i, c, r in rows}
    for impl in ("minunet", "diffusers"):
        off, on = by[impl, False]["peak_mib"], by[impl, True]["peak_mib"]
        print(f"{impl:<10} checkpointing saves {off - on:8.0f} MiB ({on / off:.2f} x the peak without)")
    for ckpt in (False, True):
        a, b = by["minunet", ckpt], by["diffusers", ckpt]
        print(f"minunet / diffusers, checkpointing {'on ' if ckpt else 'off'}: peak {a['peak_mib'] / b['peak_mib']:.2f}, "
              f"time {a['seconds'] / b['seconds']:.2f}")
    print(f"({'quick: 96/192/384/384' if args.quick else 'full-size SD 1.5'}, {rows[0][2]['params'] / 1e6:.0f} M "
          "parameters, batch 1, 64 x 64 latents, CPU float32)")


if __name__ == "__main__":
    main()
