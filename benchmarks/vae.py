"""VAE benchmark: decode time of minunet against diffusers on the same weights, and peak memory of tiled against
plain decode as the image grows. Full-size SD VAE, random weights.

    python benchmarks/vae.py                 # 512 px timing; memory at 1024 and 2048 px, 512 px tiles
    python benchmarks/vae.py --quick         # 256 px timing; memory at 256 and 512 px, 128 px tiles (CPU-friendly)

Targets: minunet no slower than diffusers; tiled peak memory flat in image size. On CPU each memory case runs in
its own process and reports the peak RSS (VmHWM) above the RSS after loading (torch's allocations are invisible
to tracemalloc); on CUDA, torch.cuda.max_memory_allocated above the weights. Both after a small warm-up decode.
"""
import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minunet.loading.vae import load_vae  # noqa: E402
from minunet.models.vae import SD  # noqa: E402
from minunet.loading.configs import to_diffusers


NO_UPCAST = dataclasses.replace(SD, force_upcast=False)  # fp16 on both sides: diffusers' decode never upcasts itself


def make_weights(folder):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**to_diffusers(SD)).save_pretrained(folder)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_decode(folder, size, reps, device, dtype):
    """Interleaved runs of both models; min and median seconds per decode."""
    from diffusers import AutoencoderKL

    ours = load_vae(folder, config=NO_UPCAST, dtype=dtype, device=device)
    theirs = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    fns = {"minunet": lambda: ours.decode(z), "diffusers": lambda: theirs.decode(z).sample}
    times = {k: [] for k in fns}
    with torch.no_grad():
        for name, fn in fns.items():  # warm-up
            fn()
        out = {}
        for _ in range(reps):
            for name, fn in fns.items():
                sync(device)
                t0 = time.perf_counter()
                out[name] = fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    err = (out["minunet"].float() - out["diffusers"].float()).abs().max().item()
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}, err


def status_kib(field):
    """VmRSS (now) or VmHWM (peak) of this process in KiB. Not ru_maxrss: Linux carries that over from the parent
    across fork + exec, so a child would report at least the parent's RSS."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark measures CPU memory on Linux only)")


def reset_peak_rss():
    try:  # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak also covers loading; the warm-up decode is small, the loading peak is the weights


def memory_case(folder, size, tiled, tile, device, dtype):
    """Run in a fresh process: one decode, peak memory above the loaded and warmed-up model, in MiB."""
    vae = load_vae(folder, config=NO_UPCAST, dtype=dtype, device=device)
    z = torch.randn(1, 4, size // 8, size // 8).to(device, dtype)
    with torch.no_grad():  # a 64 px decode first: pages in the memory-mapped weights, starts thread pools
        vae.decode(z[:, :, :8, :8])
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            vae.decode(z, tiled=tiled, tile_size=tile)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = status_kib("VmRSS")
        reset_peak_rss()
        with torch.no_grad():
            vae.decode(z, tiled=tiled, tile_size=tile)
        peak = (status_kib("VmHWM") - base) / 1024
    return {"peak_mib": peak, "seconds": time.perf_counter() - t0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one timing repeat")
    p.add_argument("--size", type=int, help="image size for the timing (default 512, quick 256)")
    p.add_argument("--reps", type=int, help="timing repeats (default 3, quick 1)")
    p.add_argument("--mem-sizes", type=int, nargs="*", help="image sizes for the memory cases (default 1024 2048)")
    p.add_argument("--tile", type=int, help="tile size in pixels for tiled decode (default 512, quick 128)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 / float16 (default: float16 on CUDA, float32 on CPU)")
    p.add_argument("--no-timing", action="store_true", help="memory cases only")
    p.add_argument("--weights", help="a diffusers VAE folder to use instead of fresh random weights")
    p.add_argument("--_memory-case", nargs=3, metavar=("FOLDER", "SIZE", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype or ("float16" if device.type == "cuda" else "float32"))
    tile = a.tile or (128 if a.quick else 512)
    if a._memory_case:
        folder, size, mode = a._memory_case
        print(json.dumps(memory_case(folder, int(size), mode == "tiled", tile, device, dtype)))
        return
    size = a.size or (256 if a.quick else 512)
    reps = a.reps or (1 if a.quick else 3)
    mem_sizes = a.mem_sizes if a.mem_sizes is not None else ([256, 512] if a.quick else [1024, 2048])

    with tempfile.TemporaryDirectory() as tmp:
        folder = a.weights or tmp
        if a.weights is None:
            make_weights(folder)
        print(f"device {device} ({torch.get_num_threads()} threads), {dtype}, torch {torch.__version__}")
        if not a.no_timing:
            times, err = time_decode(folder, size, reps, device, dtype)
            (mo, mm), (do, dm) = times["minunet"], times["diffusers"]
            print(f"decode {size}x{size}: minunet {mo:.3f} s (median {mm:.3f}), diffusers {do:.3f} s (median "
                  f"{dm:.3f}); ratio minunet/diffusers {mo / do:.3f} (min), {mm / dm:.3f} (median); "
                  f"max |diff| {err:.2e}")
        results = {}
        for s in mem_sizes:
            for mode in ("plain", "tiled"):
                cmd = [sys.executable, __file__, "--_memory-case", folder, str(s), mode, "--device", a.device,
                       "--dtype", str(dtype).removeprefix("torch."), "--tile", str(tile)]
                run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
                if run.returncode != 0:
                    print(f"{mode} {s}px failed:\n{run.stderr[-2000:]}")
                    continue
                results[s, mode] = r = json.loads(run.stdout.strip().splitlines()[-1])
                print(f"{mode:5s} decode {s}x{s} (tile {tile}): peak {r['peak_mib']:.0f} MiB above the model, "
                      f"{r['seconds']:.1f} s")
        for s in mem_sizes:
            if (s, "plain") in results and (s, "tiled") in results:
                print(f"{s}px: tiled / plain peak memory = "
                      f"{results[s, 'tiled']['peak_mib'] / results[s, 'plain']['peak_mib']:.3f}")
        tiled = [results[s, "tiled"]["peak_mib"] for s in mem_sizes if (s, "tiled") in results]
        if len(tiled) > 1:
            print(f"tiled peak memory, largest / smallest image: {tiled[-1] / tiled[0]:.3f} "
                  f"(pixels x{(mem_sizes[-1] / mem_sizes[0]) ** 2:.0f})")


if __name__ == "__main__":
    main()
