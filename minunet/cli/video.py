"""`minunet video`: prompt -> .mp4 / .gif / .webp with a text-to-video model (ModelScope, zeroscope)."""
from pathlib import Path

from ..schedulers.samplers import SAMPLERS
from .common import (UsageError, add_dtype_device_arguments, add_freeu_arguments, add_speed_arguments,
                     apply_speed_arguments, check_finite, check_out_path, check_speed_arguments, freeu_from_args,
                     parse_device, parse_size)

# video models by name: name -> Hub repo of a diffusers TextToVideoSDPipeline with safetensors files
VIDEO_MODELS = {"ms-1.7b": "ali-vilab/text-to-video-ms-1.7b"}
VIDEO_MODEL_NAMES = ("tiny-video", "tiny-video-random", *VIDEO_MODELS)
STEPS, TINY_STEPS = 50, 10  # TextToVideoSDPipeline's default; the random-weight tiny model
TINY_VIDEO_STEPS = 10       # the trained tiny model: DDIM 10 steps (what the tests and the README measure)


def add_parser(sub):
    p = sub.add_parser("video", help="prompt -> video (.mp4 / .gif / .webp) with a text-to-video model")
    p.add_argument("prompt")
    p.add_argument("--model", default="tiny-video", help="repo id | folder | " + " | ".join(VIDEO_MODEL_NAMES))
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--frames", type=int, default=None, help="number of frames (default: 16; tiny-video: 8, what it "
                                                            "was trained on)")
    p.add_argument("--size", default=None,
                   help="WIDTHxHEIGHT, multiples of 8 (default: the model's; zeroscope: 576x320)")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the file")
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS), help="sampler")
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps (default: {STEPS}; tiny-video: {TINY_VIDEO_STEPS}; tiny-video-random: "
                        f"{TINY_STEPS})")
    p.add_argument("--cfg", type=float, default=9.0, help="guidance scale")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_freeu_arguments(p, presets="a preset name (video)")
    add_dtype_device_arguments(p)
    add_speed_arguments(p, tome=False)
    p.add_argument("--out", default="minunet.mp4", help=".mp4 (needs minunet[video]), .gif or .webp")
    p.set_defaults(func=cmd_video)


def load_video_pipeline(model, dtype=None, device=None):
    """--model for `video`: 'tiny-video' (the shipped trained tiny model), 'tiny-video-random', a known name, a
    diffusers text-to-video folder or a Hub repo id."""
    from ..loading.precision import resolve_dtype
    from ..pipelines.video import VideoPipeline

    if model == "tiny-video":
        return VideoPipeline.tiny(dtype=dtype, device=device)
    if model == "tiny-video-random":
        print("minunet: --model tiny-video-random is a small RANDOM-weight model: it makes noise, not videos.")
        pipe = VideoPipeline.tiny_random()
        for module in (pipe.unet, pipe.vae, pipe.text):  # --dtype / --device as for any other model
            module.to(device=device, dtype=resolve_dtype(dtype, device))
        return pipe
    if model in VIDEO_MODELS:
        return VideoPipeline.from_pretrained(VIDEO_MODELS[model], dtype=dtype, device=device, variant="fp16")
    path = Path(model)
    if path.is_dir():
        return VideoPipeline.from_pretrained(path, dtype=dtype, device=device)
    if model.count("/") == 1 and not path.exists():
        return VideoPipeline.from_pretrained(model, dtype=dtype, device=device)
    raise UsageError(f"--model {model}: not a diffusers text-to-video folder, Hub repo id or known name "
                     f"({', '.join(VIDEO_MODEL_NAMES)})")


def check_video_args(args):
    """Every argument, the output path and its writer, before any model loads (as generate) -> (size, FreeU)."""
    from ..pipelines.video_io import check_writer

    for flag, value in (("--frames", args.frames), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    check_finite("--fps", args.fps)
    if args.fps <= 0:
        raise UsageError(f"--fps {args.fps}: must be positive")
    check_finite("--cfg", args.cfg)
    check_speed_arguments(args)
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed {args.seed}: must be an integer from 0 to 2**64 - 1")
    if args.steps is None:
        args.steps = {"tiny-video-random": TINY_STEPS, "tiny-video": TINY_VIDEO_STEPS}.get(args.model, STEPS)
    check_out_path("--out", args.out)
    try:
        check_writer(args.out)
    except (ImportError, ValueError) as e:
        raise UsageError(f"--out {args.out}: {e}") from None
    args.device = parse_device(args.device)
    return (parse_size(args.size) if args.size else None), freeu_from_args(args)


def cmd_video(args):
    import numpy as np
    import torch

    from ..pipelines.video_io import export_video

    size, freeu = check_video_args(args)
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
