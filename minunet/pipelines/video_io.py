"""Video files: export_video(frames, path, fps=8) writes .gif / .webp through PIL and .mp4 (H.264) through PyAV.

PyAV (`pip install 'minunet[video]'`, the `av` wheel) is the optional part: its wheels ship FFmpeg's libraries with
libx264, so it encodes in-process (no ffmpeg executable to find or pipe into) and reads back frame by frame; it is
what torchvision.io uses for video. GIF and WebP need nothing beyond Pillow, which minunet already uses.
"""
from fractions import Fraction
from pathlib import Path

import numpy as np

SUFFIXES = (".gif", ".webp", ".mp4")


def export_video(frames, path, fps=8):
    """Write one video. frames: a list of PIL images or (H, W, 3) arrays, an array (F, H, W, 3) (uint8, or float
    in [0, 1] as VideoPipeline's "np" frames[0]), or a tensor (F, 3, H, W) in [0, 1] ("pt" frames[0]).
    GIF stores 1/100 s delays (the frame time is rounded to that) and a 256-colour palette per frame, and merges a
    frame identical to the one before into it (PIL); WebP is written lossless; MP4 is H.264, yuv420p (even sizes).
    Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"export_video: {path}: unsupported file type '{path.suffix}' "
                         f"(supported: {', '.join(SUFFIXES)})")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not fps > 0:
        raise ValueError(f"export_video: fps must be a positive number, got {fps!r}")
    arrays = as_uint8_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        _write_mp4(arrays, path, fps)
    else:
        from PIL import Image

        images = [Image.fromarray(a) for a in arrays]
        extra = {"loop": 0} if suffix == ".gif" else {"loop": 0, "lossless": True}
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000 / fps, **extra)
    return path


def as_uint8_frames(frames):
    """Any accepted frames -> list of (H, W, 3) uint8 arrays, all of one size."""
    if hasattr(frames, "detach"):  # a torch tensor (F, 3, H, W) in [0, 1]
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"export_video: a tensor must be (F, 3, H, W) in [0, 1], got shape {tuple(frames.shape)}"
                             + ("; pass one video, e.g. .frames[0]" if frames.ndim == 5 else ""))
        frames = frames.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"export_video: an array must be (F, H, W, 3), got shape {frames.shape}"
                         + ("; pass one video, e.g. .frames[0]" if frames.ndim == 5 else ""))
    arrays = [_uint8(np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f)) for f in frames]
    if not arrays:
        raise ValueError("export_video: no frames")
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1 or arrays[0].ndim != 3 or arrays[0].shape[2] != 3:
        raise ValueError(f"export_video: frames must all be (H, W, 3) of one size, got shapes {sorted(sizes)}")
    return arrays


def _uint8(a):
    if a.dtype == np.uint8:
        return a
    return (np.clip(a.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)  # [0, 1] floats, as diffusers


def _write_mp4(arrays, path, fps):
    try:
        import av
    except ImportError:
        raise ImportError(f"export_video: writing {path.name} (.mp4, H.264) needs PyAV: pip install 'minunet[video]' "
                          "(or write .gif / .webp, which need nothing more)") from None
    h, w = arrays[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"export_video: H.264 (yuv420p) needs an even width and height, got {w}x{h}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}  # visually lossless; the default 23 smears fine detail
        for a in arrays:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
