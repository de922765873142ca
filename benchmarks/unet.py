"""minunet vs diffusers UNet, same weights and inputs, same run: forward time, load time and peak RSS.

    python benchmarks/unet.py            # small + full SD 1.5 forward on CPU (float32), full-size load
    python benchmarks/unet.py --quick    # small forward only, and a load of a small file
Ratios are minunet / diffusers (< 1 is better for minunet). On CUDA, fp16 and bf16 forwards are added.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import TINY, diffusers_unet, randomize_  # noqa: E402

from minunet import SD15, UNet, original_state_dict  # noqa: E402
from minunet.loading.configs import to_diffusers  # noqa: E402


def timeit(fn, repeat):
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]  # median


@torch.no_grad()
def forward_case(label, cfg, hw, device, dtype, repeat, init=True):
    ours = UNet(cfg).eval()
    if init:
        randomize_(ours)
    ref = diffusers_unet(ours)
    ours, ref = ours.to(device, dtype), ref.to(device, dtype)
    x = torch.randn(2, cfg.in_channels, *hw, device=device, dtype=dtype)
    t = torch.tensor([999.0, 500.0], device=device)
    ctx = torch.randn(2, 77, cfg.context_dim, device=device, dtype=dtype)
    a = timeit(lambda: ours(x, t, ctx), repeat)
    b = timeit(lambda: ref(x, t, ctx), repeat)
    print(f"forward {label:<28} minunet {a * 1e3:9.1f} ms   diffusers {b * 1e3:9.1f} ms   ratio {a / b:5.2f}")


# peak RSS from the kernel's VmHWM: ru_maxrss would carry the parent's peak across fork/exec
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"
LOADER = r"""
import json, sys, time, torch
torch.set_num_threads(2)
kind, path, config = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "minunet":
    from minunet import load_unet
else:
    from diffusers import UNet2DConditionModel
t0 = time.perf_counter()  # the load alone, imports excluded
if kind == "minunet":
    model = load_unet(path)
else:
    model = UNet2DConditionModel.from_single_file(path, config=config, subfolder="unet", local_files_only=True,
                                                  torch_dtype=torch.float16)
load = time.perf_counter() - t0
touched = sum(float(p.float().sum()) for p in model.parameters())  # page every weight in
print(json.dumps({"load_s": load, "peak_rss": PEAK}))
""".replace("PEAK", PEAK)


def load_case(cfg, label):
    with tempfile.TemporaryDirectory() as tmp:
        model = UNet(cfg)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        state = {k: v.half().contiguous() for k, v in original_state_dict(model).items()}
        unet_bytes = sum(v.numel() * 2 for v in state.values())
        del model
        path = Path(tmp) / "model.safetensors"
        import safetensors.torch as st
        st.save_file(state, path)
        del state
        (Path(tmp) / "unet").mkdir()
        (Path(tmp) / "unet" / "config.json").write_text(json.dumps(to_diffusers(cfg)))
        res, base = {}, {}
        for kind in ("minunet", "diffusers"):  # RSS of the imports alone, then of a load, each in a fresh process
            imports = "from minunet import load_unet" if kind == "minunet" else "from diffusers import UNet2DConditionModel"
            base[kind] = json.loads(subprocess.run([sys.executable, "-c", f"import json, torch; {imports}; print({PEAK})"],
                                                   capture_output=True, text=True, check=True).stdout)
            out = subprocess.run([sys.executable, "-c", LOADER, kind, str(path), tmp], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:])
                raise SystemExit(f"{kind} load failed")
            res[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        a, b = res["minunet"], res["diffusers"]
        print(f"load {label}: UNet bytes in file {unet_bytes / 2**20:.0f} MiB (every weight touched after the load)")
        for kind, r in res.items():
            print(f"  {kind:<9} load {r['load_s']:6.2f} s  peak RSS {r['peak_rss'] / 2**20:7.0f} MiB, "
                  f"{(r['peak_rss'] - base[kind]) / 2**20:6.0f} MiB above its imports = "
                  f"{(r['peak_rss'] - base[kind]) / unet_bytes:.2f}x the UNet bytes")
        print(f"  ratios minunet/diffusers: load time {a['load_s'] / b['load_s']:.2f}, peak RSS {a['peak_rss'] / b['peak_rss']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, CUDA: {torch.cuda.is_available()}")
    forward_case("tiny SD1.5 structure 32x32", TINY["sd15"], (32, 32), "cpu", torch.float32, args.repeat)
    if not args.quick:
        forward_case("full SD1.5 64x64 (512px)", SD15, (64, 64), "cpu", torch.float32, args.repeat, init=False)
    if torch.cuda.is_available():
        for dtype in (torch.float16, torch.bfloat16):
            forward_case(f"full SD1.5 64x64 {str(dtype)[6:]} cuda", SD15, (64, 64), "cuda", dtype, 10, init=False)
    load_case(TINY["sd15"] if args.quick else SD15, "tiny SD1.5 (fp16)" if args.quick else "full SD1.5 (fp16)")


if __name__ == "__main__":
    main()
