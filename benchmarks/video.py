"""Text-to-video: seconds per tiny video, minunet's VideoPipeline vs diffusers' TextToVideoSDPipeline (same tiny
random weights, same run), and the peak memory of the chunked VAE decode of the frames vs one call.

    python benchmarks/video.py [--frames 8] [--steps 10] [--size 64] [--repeat 3]
    python benchmarks/video.py --memory-frames 16 --memory-size 256 --chunk 2

Timing: the tests' tiny pipeline (tests/test_video_pipeline.py), saved in the diffusers layout and loaded by both;
runs interleaved; ratio = minunet / diffusers of the fastest runs (median in brackets). Memory: the full-size SD VAE
structure (random weights) decoding `--memory-frames` frames, each case in a fresh process; CPU: peak RSS (VmHWM)
above the RSS before the decode; CUDA: peak allocated above the allocated before.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from pipeline import seconds  # noqa: E402  (benchmarks/pipeline.py: interleaved fastest / median)
from vae import reset_peak_rss, status_kib  # noqa: E402

from minunet.pipelines.video import VideoPipeline, decode_frames  # noqa: E402


def timing(args, device):
    import warnings

    from test_video_pipeline import video_pipeline

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = video_pipeline(Path(tmp)).to(device)
        theirs.set_progress_bar_config(disable=True)
        ours = VideoPipeline.from_pretrained(tmp, device=device)
        kw = dict(prompt="a red fox in the snow", negative_prompt="blurry", num_frames=args.frames,
                  num_inference_steps=args.steps, height=args.size, width=args.size)
        t = seconds({"ours": lambda: ours(**kw, generator=torch.Generator().manual_seed(0), progress=False),
                     "theirs": lambda: theirs(**kw, generator=torch.Generator().manual_seed(0))}, args.repeat)
    (a, am), (b, bm) = t["ours"], t["theirs"]
    print(f"tiny video ({args.frames} frames, {args.size}x{args.size} px, {args.steps} DDIM steps, CFG): minunet "
          f"{a:.3f} s/video [{am:.3f}]   diffusers {b:.3f} s/video [{bm:.3f}]   ratio {a / b:.2f} (fastest run; "
          f"median ratio {am / bm:.2f})")


def memory_case(frames, size, chunk, device):
    """In a fresh process: decode (1, 4, frames, size/8, size/8) latents `chunk` frames per VAE call."""
    from minunet.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig()).eval().to(device)          # the SD / ModelScope VAE structure (random weights)
    z = torch.randn(1, 4, frames, size // 8, size // 8, device=device)
    decode_frames(vae, z[:, :, :1, :8, :8], 1)               # warm-up: thread pools, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = decode_frames(vae, z, chunk)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = status_kib("VmRSS")
        reset_peak_rss()
        out = decode_frames(vae, z, chunk)
        peak = (status_kib("VmHWM") - base) / 1024
    return {"peak_mib": peak, "output_mib": out.numel() * out.element_size() / 2**20}


def memory(args, device):
    rows = {}
    for chunk in (args.chunk, args.memory_frames):
        cmd = [sys.executable, __file__, "--_memory-case", str(args.memory_frames), str(args.memory_size), str(chunk),
               "--device", str(device)]
        rows[chunk] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    one, chunked = rows[args.memory_frames], rows[args.chunk]
    print(f"VAE decode of {args.memory_frames} frames at {args.memory_size}x{args.memory_size} (SD VAE structure): "
          f"one call {one['peak_mib']:.0f} MiB peak, {args.chunk} frames per call {chunked['peak_mib']:.0f} MiB peak "
          f"(the frames themselves: {one['output_mib']:.0f} MiB); ratio {chunked['peak_mib'] / one['peak_mib']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=64, help="frame side in pixels (tiny VAE: 2 px per latent)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-frames", type=int, default=16)
    ap.add_argument("--memory-size", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=2, help="frames per VAE call in the chunked case")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--_memory-case", nargs=3, type=int, metavar=("FRAMES", "SIZE", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args._memory_case:
        with torch.no_grad():
            print(json.dumps(memory_case(*args._memory_case, device)))
        return
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    if not args.no_timing:
        timing(args, device)
    memory(args, device)


if __name__ == "__main__":
    main()
