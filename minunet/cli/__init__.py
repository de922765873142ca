"""The `minunet` command: generate, video, inspect, parity, convert, download (one module per command family:
generate.py, video.py, files.py, train.py; what they share in common.py).

    minunet generate "a red fox" --model tiny --out fox.png
    minunet generate "a red fox" --model sd15 --upscale x2 --out fox-1024.png
    minunet video "a red circle moving to the right on a blue background" --model tiny-video --out circle.gif
    minunet inspect sd_xl_base_1.0.safetensors
    minunet parity v1-5-pruned-emaonly.safetensors
    minunet download sd15
    minunet train-tiny --out runs/tiny
"""
import argparse
import functools
import sys

from . import files, generate, train, video
from .common import HelpFormatter, UsageError


def build_parser():
    from .. import __version__

    ap = argparse.ArgumentParser(prog="minunet", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"minunet {__version__}")
    parser_class = functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=parser_class)
    generate.add_parser(sub)
    video.add_parser(sub)
    files.add_parsers(sub)
    train.add_parser(sub)
    return ap


def given_options(argv):
    """The options written on the command line: argv parsed again with every default suppressed."""
    ap = build_parser()
    subparsers = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for parser in subparsers.choices.values():
        for action in parser._actions:
            action.default = argparse.SUPPRESS
    return set(vars(ap.parse_args(argv))) - {"command", "func"}


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "from_png", None) is not None:  # generate --from-png: the options given override the PNG's
        args.given = given_options(sys.argv[1:] if argv is None else argv)
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
