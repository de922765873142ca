"""export_video round trips: the written file read back with the library that wrote it has F frames of the size
written (and, where the format is lossless, the same pixels); bad input is a clear error."""
import builtins

import numpy as np
import pytest
import torch
from PIL import Image

from minunet import export_video

F, H, W = 5, 48, 64


def frames(seed=0):
    """Distinct frames with smooth content (a moving gradient) plus noise, (F, H, W, 3) float in [0, 1]."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    out = [np.stack([(x + 8 * f) % W / W, y / H, np.full((H, W), f / F)], -1) for f in range(F)]
    return np.clip(np.stack(out) + 0.02 * g.standard_normal((F, H, W, 3)), 0, 1).astype(np.float32)


def read_pil(path):
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
        return out, im.info.get("duration")


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_pil_formats_round_trip(tmp_path, suffix):
    video = frames()
    path = export_video(video, tmp_path / f"v{suffix}", fps=10)
    back, duration = read_pil(path)
    assert len(back) == F and all(b.shape == (H, W, 3) for b in back)
    assert duration == 100
    expected = (video * 255).round().astype(np.uint8)
    err = max(np.abs(b.astype(int) - e.astype(int)).max() for b, e in zip(back, expected))
    assert err == 0 if suffix == ".webp" else err < 64  # WebP lossless; GIF has a 256-colour palette


def test_mp4_round_trip(tmp_path):
    av = pytest.importorskip("av")
    video = frames()
    path = export_video(video, tmp_path / "v.mp4", fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 8
        back = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(back) == F and all(b.shape == (H, W, 3) for b in back)
    expected = (video * 255).round().astype(np.float32)
    assert np.mean([np.abs(b - e).mean() for b, e in zip(back, expected)]) < 8  # lossy, crf 18, chroma subsampled


def test_accepted_frame_types_give_the_same_file(tmp_path):
    video = frames()
    u8 = (video * 255).round().astype(np.uint8)
    inputs = {"float": video, "uint8": u8, "pil": [Image.fromarray(a) for a in u8],
              "pt": torch.from_numpy(video).permute(0, 3, 1, 2)}
    files = {k: export_video(v, tmp_path / f"{k}.webp").read_bytes() for k, v in inputs.items()}
    assert len(set(files.values())) == 1


def test_errors(tmp_path, monkeypatch):
    video = frames()
    with pytest.raises(ValueError, match=r"v.avi: unsupported file type '.avi'"):
        export_video(video, tmp_path / "v.avi")
    with pytest.raises(ValueError, match="pass one video"):
        export_video(video[None], tmp_path / "v.gif")
    with pytest.raises(ValueError, match="fps must be a positive number"):
        export_video(video, tmp_path / "v.gif", fps=0)
    with pytest.raises(ValueError, match="no frames"):
        export_video([], tmp_path / "v.gif")
    with pytest.raises(ValueError, match="even width and height"):
        export_video(video[:, :47], tmp_path / "v.mp4")
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(ImportError, match=r"pip install 'minunet\[video\]'"):
        export_video(video, tmp_path / "v.mp4")
