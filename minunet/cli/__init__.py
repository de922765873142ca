"""The `minunet` command: generate, video, inspect, parity, convert, download (one module per command family:
generate.py, video.py, files.py; what they share in common.py).

    minunet generate "a red fox" --model tiny --out fox.png
    minunet generate "a red fox" --model sd15 --upscale x2 --out fox-1024.png
    minunet video "a panda surfing" --model tiny-video --frames 16 --out panda.mp4
    minunet inspect sd_xl_base_1.0.safetensors
    minunet parity v1-5-pruned-emaonly.safetensors
    minunet download sd15
"""
import argparse
import sys

from . import files, generate, video
from .common import UsageError


def build_parser():
    ap = argparse.ArgumentParser(prog="minunet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    video.add_parser(sub)
    files.add_parsers(sub)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..errors import CheckpointError
    from ..errors import NonFiniteError
    try:
        args.func(args)
    except UsageError as e:  # the command line: exit 2, as argparse's own errors
        print(f"minunet: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteError, RuntimeError, OSError) as e:  # the model, the machine: exit 1
        print(f"minunet: error: {e}", file=sys.stderr)
        return 1
    return 0
