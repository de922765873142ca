"""Peak memory and time of one SD 1.5 UNet training step, with and without gradient checkpointing, minunet vs
diffusers in the same run.

    python benchmarks/train.py            # full-size SD 1.5 UNet, batch 1, 64 x 64 latents, CPU float32
    python benchmarks/train.py --quick    # the same structure at 0.3 x the width (96/192/384/384)
    python benchmarks/train.py --lora 8   # base frozen, a rank-8 LoRA on the attention projections trained

One step = forward, epsilon-MSE loss, backward into every parameter (a full fine-tune), or into a LoRA's only
(minunet.new_lora vs diffusers' add_adapter with a peft LoraConfig, same targets and rank); an optimizer's state
would add the same for both.

Memory: each (library, checkpointing) case runs in a fresh process and measures three things:
- peak live tensor bytes: every allocation and free torch makes during the step, in order (the profiler's memory
  events), summed; the exact peak, independent of the allocator (the CPU twin of torch.cuda.max_memory_allocated);
- activations kept for backward: the bytes of the tensors autograd saves (saved-tensor hooks; weights excluded);
- peak RSS above the model (VmHWM reset to VmRSS before the step): what the machine sees, allocator included
  (glibc keeps freed blocks, so this is above the live peak and noisier).
`torch.utils.checkpoint` imports torch._dynamo (about 900 modules, ~100 MiB of RSS and 2 s) on its first call, and
diffusers imports it at import time: every case imports it before the baseline, or minunet's first checkpointed
step would be charged for an import diffusers paid earlier.

Time: both models in one process (per checkpointing setting), steps interleaved (minunet, diffusers, minunet, ...)
after a warm-up step each, median of --repeat; separate processes on a shared machine drift by 20-30%.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from minunet.loading.configs import to_diffusers

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the LoRA's modules with --lora


def config(quick):
    from minunet import SD15

    if not quick:
        return SD15
    return dataclasses.replace(SD15, block_out_channels=(96, 192, 384, 384), num_heads=(8, 8, 8, 8))


class Case:
    """One library's UNet set up for training: `step()` runs forward + loss + backward, `clear()` drops the
    gradients, `weights` holds the storages of every parameter (base and LoRA), `trainable` what is trained."""

    def __init__(self, impl, quick, ckpt, rank, seed=0):
        import torch

        torch.manual_seed(seed)
        cfg = config(quick)
        if impl == "minunet":
            from minunet import UNet
            model = UNet(cfg)
            self.run = lambda x, t, c: model(x, t, c)
        else:
            from diffusers import UNet2DConditionModel
            model = UNet2DConditionModel(**to_diffusers(cfg))
            self.run = lambda x, t, c: model(x, t, c).sample
        model.train()
        if ckpt:
            model.enable_gradient_checkpointing()
        self.params = sum(p.numel() for p in model.parameters())
        self.trainable = self.add_lora(model, impl, rank) if rank else list(model.parameters())
        self.weights = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *self.trainable]}
        g = torch.Generator().manual_seed(seed)
        self.inputs = (torch.randn(1, 4, 64, 64, generator=g), torch.tensor([500.0]),
                       torch.randn(1, 77, cfg.context_dim, generator=g))
        self.target = torch.randn(1, 4, 64, 64, generator=g)

    @staticmethod
    def add_lora(model, impl, rank):
        """Freeze the base, attach a fresh rank-`rank` LoRA on TARGETS -> its parameters."""
        model.requires_grad_(False)
        if impl == "minunet":
            from minunet.loading.lora import new_lora
            return list(new_lora(model, rank, include=tuple(TARGETS)).parameters())
        from peft import LoraConfig
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS))
        return [p for p in model.parameters() if p.requires_grad]

    def loss(self):
        import torch.nn.functional as F

        return F.mse_loss(self.run(*self.inputs), self.target)

    def step(self):
        self.loss().backward()

    def clear(self):
        for p in self.trainable:
            p.grad = None


MEMORY = r"""
import json, sys, torch
import torch._dynamo  # what torch.utils.checkpoint's first call imports (diffusers: at import); see the docstring
impl, quick, ckpt, rank, threads = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[6])
from train import Case, live_peak_mib, reset_peak_rss, status_kib
case = Case(impl, quick, ckpt, rank)
base = status_kib("VmRSS")
reset_peak_rss()
saved = {}  # storage -> bytes of every tensor autograd keeps for backward (an exact, allocator-free measure)
def pack(z):
    if z.untyped_storage().data_ptr() not in case.weights:
        saved[z.untyped_storage().data_ptr()] = z.untyped_storage().nbytes()
    return z
with torch.autograd.graph.saved_tensors_hooks(pack, lambda z: z):
    loss = case.loss()
loss.backward()
peak = status_kib("VmHWM")
case.clear()
live = live_peak_mib(case.step)
trained = sum(p.numel() for p in case.trainable)
print(json.dumps({"peak_mib": (peak - base) / 1024, "live_mib": live, "params": case.params, "trained": trained,
                  "grad_mib": trained * 4 / 2**20, "saved_mib": sum(saved.values()) / 2**20, "loss": float(loss)}))
"""

TIME = r"""
import json, sys, time, torch
import torch._dynamo
quick, ckpt, rank, threads, repeat = sys.argv[1] == "1", sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[6])
from train import Case
cases = {impl: Case(impl, quick, ckpt, rank) for impl in ("minunet", "diffusers")}
times = {impl: [] for impl in cases}
for i in range(repeat + 1):  # step 0 warms up
    for impl, case in cases.items():
        case.clear()
        t0 = time.perf_counter()
        case.step()
        if i:
            times[impl].append(time.perf_counter() - t0)
        case.clear()
print(json.dumps({impl: sorted(v)[len(v) // 2] for impl, v in times.items()}))
"""


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


def child(script, *argv):
    """Run a case script in a fresh interpreter -> the JSON of its last line."""
    run = subprocess.run([sys.executable, "-c", script, *map(str, argv), str(Path(__file__).parent)],
                         capture_output=True, text=True, env={**os.environ})
    if run.returncode != 0:
        raise SystemExit(f"case {argv} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.3 x SD 1.5's width (96/192/384/384)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timed steps per library (median printed)")
    ap.add_argument("--lora", type=int, default=0, metavar="RANK",
                    help="train a rank-RANK LoRA on the attention projections (base frozen) instead of every weight")
    args = ap.parse_args()
    q = int(args.quick)
    by = {}
    for ckpt in (0, 1):
        seconds = child(TIME, q, ckpt, args.lora, args.threads, args.repeat)
        for impl in ("minunet", "diffusers"):
            r = by[impl, ckpt] = {**child(MEMORY, impl, q, ckpt, args.lora, args.threads), "seconds": seconds[impl]}
            print(f"{impl:<10} checkpointing {'on ' if ckpt else 'off'}  peak live tensors {r['live_mib']:7.0f} MiB "
                  f"(gradients {r['grad_mib']:.0f} MiB of it)   kept for backward {r['saved_mib']:7.0f} MiB   "
                  f"peak RSS above model {r['peak_mib']:7.0f} MiB   step {r['seconds']:6.2f} s", flush=True)
    for impl in ("minunet", "diffusers"):
        for key, what in (("live_mib", "live peak"), ("peak_mib", "RSS peak")):
            off, on = by[impl, 0][key], by[impl, 1][key]
            print(f"{impl:<10} checkpointing saves {off - on:8.0f} MiB of the {what} ({on / off:.2f} x without)")
    for ckpt in (0, 1):
        a, b = by["minunet", ckpt], by["diffusers", ckpt]
        print(f"minunet / diffusers, checkpointing {'on ' if ckpt else 'off'}: live peak "
              f"{a['live_mib'] / b['live_mib']:.2f}, RSS peak {a['peak_mib'] / b['peak_mib']:.2f}, "
              f"time {a['seconds'] / b['seconds']:.2f} (interleaved, median of {args.repeat})")
    trained = f"a rank-{args.lora} LoRA on {'/'.join(TARGETS)} trained" if args.lora else "every weight trained"
    print(f"({'quick: 96/192/384/384' if args.quick else 'full-size SD 1.5'}, {by['minunet', 0]['params'] / 1e6:.0f} M "
          f"parameters, {trained}, batch 1, 64 x 64 latents, CPU float32)")


if __name__ == "__main__":
    main()
