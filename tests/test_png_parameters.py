"""The PNG's `parameters` chunk is A1111's text, exactly as A1111 writes it; the exact settings are JSON in a
`minunet` chunk; each image of --num-images has its own seed; --seed -1 is random, printed and recorded;
`generate --from-png` repeats a generation from our PNGs and from A1111's text, options given overriding it."""
import hashlib
import json

import safetensors.torch as st
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from minunet import __version__
from minunet.cli import main

BASE = ["generate", "a red fox", "--model", "tiny-random", "--steps", "2", "--size", "64x48"]


def pixels(path):
    return torch.tensor(list(Image.open(path).convert("RGB").getdata()), dtype=torch.int32)


def chunks(path):
    return Image.open(path).text


def test_parameters_are_a1111_text_and_the_settings_json(tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(BASE + ["--negative", "blurry, bad", "--sampler", "euler_a", "--karras", "--seed", "7",
                        "--clip-skip", "1", "--freeu", "sd15", "--out", str(out)]) == 0
    text = chunks(out)
    assert text["parameters"] == (
        "a red fox\n"
        "Negative prompt: blurry, bad\n"
        "Steps: 2, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 7, Size: 64x48, Model: tiny-random, "
        "Clip skip: 2, freeu_enabled: True, freeu_b1: 1.5, freeu_b2: 1.6, freeu_s1: 0.9, freeu_s2: 0.2, "
        f"Version: minunet {__version__}")
    s = json.loads(text["minunet"])["settings"]
    assert (s["cfg"], s["seed"], s["sampler"], s["karras"], s["clip_skip"]) == (7.5, 7, "euler_a", True, 1)
    assert (s["freeu"], s["freeu_version"], s["freeu_mapping"]) == ("1.5,1.6,0.9,0.2", 2, "official")


def test_model_and_lora_hashes_and_img2img_strength(tmp_path):
    """Model hash: the first 10 hex digits of the file's SHA-256; LoRA: <lora:NAME:SCALE> in the prompt and the
    first 12 of the SHA-256 of its tensor data; img2img: Denoising strength (the default resolved)."""
    import pipes

    _, model = pipes.sd_single_file(tmp_path)
    lora = tmp_path / "style.safetensors"
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    st.save_file({f"{stem}.lora_down.weight": torch.randn(2, 32), f"{stem}.lora_up.weight": torch.randn(32, 2)}, lora)
    data = lora.read_bytes()
    lora_hash = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
    Image.new("RGB", (32, 32), "red").save(tmp_path / "in.png")
    out = tmp_path / "o.png"
    assert main(["generate", "a cat", "--model", str(model), "--steps", "2", "--image", str(tmp_path / "in.png"),
                 "--lora", f"{lora}:0.5", "--cfg", "7", "--out", str(out)]) == 0
    assert chunks(out)["parameters"] == (
        "a cat <lora:style:0.5>\n"
        "Steps: 2, Sampler: Euler, CFG scale: 7, Seed: 0, Size: 32x32, "
        f"Model hash: {hashlib.sha256(model.read_bytes()).hexdigest()[:10]}, Model: tiny-sd1, Denoising strength: 0.8, "
        f'Lora hashes: "style: {lora_hash}", Version: minunet {__version__}')


def test_each_image_has_its_own_seed_and_from_png_repeats_it(tmp_path):
    assert main(BASE + ["--seed", "5", "--num-images", "2", "--out", str(tmp_path / "b.png")]) == 0
    assert [json.loads(chunks(tmp_path / f"b-{i}.png")["minunet"])["settings"]["seed"] for i in (0, 1)] == [5, 6]
    assert "Seed: 6," in chunks(tmp_path / "b-1.png")["parameters"]
    assert main(BASE + ["--seed", "6", "--out", str(tmp_path / "one.png")]) == 0
    assert torch.equal(pixels(tmp_path / "b-1.png"), pixels(tmp_path / "one.png"))
    assert main(["generate", "--from-png", str(tmp_path / "b-1.png"), "--out", str(tmp_path / "again.png")]) == 0
    assert torch.equal(pixels(tmp_path / "again.png"), pixels(tmp_path / "one.png"))
    # an option given overrides the PNG's
    assert main(["generate", "--from-png", str(tmp_path / "b-1.png"), "--steps", "3", "--out", str(tmp_path / "c.png")]) == 0
    s = json.loads(chunks(tmp_path / "c.png")["minunet"])["settings"]
    assert (s["steps"], s["seed"], s["prompt"]) == (3, 6, "a red fox")
    assert not torch.equal(pixels(tmp_path / "c.png"), pixels(tmp_path / "one.png"))


def test_random_seed_is_printed_recorded_and_repeatable(tmp_path, capsys):
    assert main(BASE + ["--seed", "-1", "--out", str(tmp_path / "r.png")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "random seed" in l)
    seed = int(line.rsplit(" ", 1)[1])
    assert json.loads(chunks(tmp_path / "r.png")["minunet"])["settings"]["seed"] == seed
    assert f"Seed: {seed}," in chunks(tmp_path / "r.png")["parameters"]
    assert main(["generate", "--from-png", str(tmp_path / "r.png"), "--out", str(tmp_path / "r2.png")]) == 0
    assert torch.equal(pixels(tmp_path / "r.png"), pixels(tmp_path / "r2.png"))


def test_compare_freeu_records_both_panels(tmp_path):
    out = tmp_path / "cmp.png"
    assert main(BASE + ["--freeu", "1.3,1.4,0.9,0.2", "--compare-freeu", "--out", str(out)]) == 0
    text = chunks(out)
    assert "Size: 64x48," in text["parameters"] and text["parameters"].endswith(
        "Comparison: left without FreeU / right with FreeU")
    left, right = json.loads(text["minunet"])["settings"]["panels"]
    assert left["freeu"] is None and right["freeu"] == "1.3,1.4,0.9,0.2"


def a1111_png(path, text):
    """A PNG as A1111 saves it: its infotext in the `parameters` chunk, nothing else."""
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


A1111 = ("a red fox in the snow\n"
         "Negative prompt: blurry\n"
         "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x48, "
         "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: v1.10.1")


def test_from_a1111_png(tmp_path, capsys):
    """A1111's text (its sampler names, Schedule type, Clip skip k = minunet's k - 1): the same image as the
    options written out; the older 'DPM++ 2M Karras' spelling too."""
    assert main(["generate", "a red fox in the snow", "--negative", "blurry", "--steps", "3", "--sampler", "dpmpp_2m",
                 "--karras", "--cfg", "6.5", "--seed", "1234", "--size", "64x48", "--clip-skip", "1", "--model", "tiny-random",
                 "--out", str(tmp_path / "ref.png")]) == 0
    for i, text in enumerate((A1111, A1111.replace("DPM++ 2M, Schedule type: Karras", "DPM++ 2M Karras"))):
        a1111_png(tmp_path / f"a{i}.png", text)
        assert main(["generate", "--from-png", str(tmp_path / f"a{i}.png"), "--model", "tiny-random",
                     "--out", str(tmp_path / f"ours{i}.png")]) == 0
        assert torch.equal(pixels(tmp_path / f"ours{i}.png"), pixels(tmp_path / "ref.png"))


def test_from_a1111_png_refuses_what_it_cannot_locate(tmp_path, capsys):
    """A checkpoint or LoRA that is only a name, an unknown sampler: exit 2 naming it, never a silent stand-in."""
    cases = {"Model: v1-5-pruned-emaonly": ("Model: my_merge_v3", "checkpoint 'my_merge_v3'"),
             "a red fox in the snow\n": ("a red fox <lora:film_grain:0.7>\n", "<lora:film_grain:0.7>"),
             "Sampler: DPM++ 2M": ("Sampler: UniPC", "sampler 'UniPC' has no minunet equivalent")}
    for old, (new, message) in cases.items():
        a1111_png(tmp_path / "a.png", A1111.replace(old, new))
        extra = [] if "Model" in old else ["--model", "tiny-random"]
        assert main(["generate", "--from-png", str(tmp_path / "a.png"), *extra, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()
