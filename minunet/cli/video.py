"""`minunet video`: prompt -> .mp4 / .gif / .webp with a text-to-video model (ModelScope, zeroscope)."""
from pathlib import Path

from ..schedulers.samplers import SAMPLERS
from .common import (UsageError, add_dtype_device_arguments, add_freeu_arguments, add_speed_arguments,
                     apply_speed_arguments, check_speed_arguments, freeu_from_args, parse_size)

# video models by name: name -> Hub repo of a diffusers TextToVideoSDPipeline with safetensors files
VIDEO_MODELS = {"ms-1.7b": "ali-vilab/text-to-video-ms-1.7b"}
VIDEO_MODEL_NAMES = ("tiny-video", *VIDEO_MODELS)


def add_parser(sub):
    p = sub.add_parser("video", help="prompt -> video (.mp4 / .gif / .webp) with a text-to-video model")
    p.add_argument("prompt")
    p.add_argument("--model", default="tiny-video", help="repo id | folder | " + " | ".join(VIDEO_MODEL_NAMES))
    p.add_argument("--negative", default=None)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", default=None,
                   help="WIDTHxHEIGHT, multiples of 8 (default: the model's; zeroscope: 576x320)")
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=9.0)
    p.add_argument("--seed", type=int, default=0)
    add_freeu_arguments(p, presets="a preset name (video)")
    add_dtype_device_arguments(p)
    add_speed_arguments(p, tome=False)
    p.add_argument("--out", default="minunet.mp4", help=".mp4 (needs minunet[video]), .gif or .webp")
    p.set_defaults(func=cmd_video)


def load_video_pipeline(model, dtype=None, device=None):
    """--model for `video`: 'tiny-video', a known name, a diffusers text-to-video folder or a Hub repo id."""
    from ..pipelines.video import VideoPipeline

    if model == "tiny-video":
        print("minunet: --model tiny-video is a small RANDOM-weight model: it makes noise, not videos.")
        return VideoPipeline.tiny()
    if model in VIDEO_MODELS:
        return VideoPipeline.from_pretrained(VIDEO_MODELS[model], dtype=dtype, device=device, variant="fp16")
    path = Path(model)
    if path.is_dir():
        return VideoPipeline.from_pretrained(path, dtype=dtype, device=device)
    if model.count("/") == 1 and not path.exists():
        return VideoPipeline.from_pretrained(model, dtype=dtype, device=device)
    raise UsageError(f"--model {model}: not a diffusers text-to-video folder, Hub repo id or known name "
                     f"({', '.join(VIDEO_MODEL_NAMES)})")


def cmd_video(args):
    import numpy as np
    import torch

    from ..pipelines.video_io import export_video

    if args.frames < 1:
        raise UsageError(f"--frames {args.frames}: must be at least 1")
    if args.fps <= 0:
        raise UsageError(f"--fps {args.fps}: must be positive")
    size = parse_size(args.size) if args.size else None
    freeu = freeu_from_args(args)
    check_speed_arguments(args)
    pipe = load_video_pipeline(args.model, dtype=args.dtype, device=args.device)
    apply_speed_arguments(pipe, args)
    width, height = size or (None, None)

    def run(with_freeu):
        if with_freeu is not None:
            pipe.enable_freeu(with_freeu)
        else:
            pipe.disable_freeu()
        try:
            return pipe(args.prompt, negative_prompt=args.negative, height=height, width=width,
                        num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.cfg,
                        sampler=args.sampler, generator=torch.Generator().manual_seed(args.seed)).frames[0]
        except ValueError as e:  # bad --steps and the like: the pipeline's message, without a traceback
            raise UsageError(str(e)) from None

    # (F, H, W, 3) in [0, 1]; side by side: without FreeU on the left, with it on the right
    frames = np.concatenate([run(None), run(freeu)], axis=2) if args.compare_freeu else run(freeu)
    try:
        out = export_video(frames, args.out, fps=args.fps)
    except (ImportError, ValueError) as e:
        raise UsageError(str(e)) from None
    f, h, w = frames.shape[:3]
    print(f"wrote {out} ({f} frames, {w}x{h}, {args.fps:g} fps)"
          + (" -- left without FreeU, right with" if args.compare_freeu else ""))
