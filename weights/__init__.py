"""Reference data shipped with minunet as `minunet.weights` (no weights: configs, manifests, tokenizer files).

See weights/README.md for where each file came from. `WEIGHTS` is this folder, installed or in a checkout.
"""
from pathlib import Path

WEIGHTS = Path(__file__).parent
CONFIGS = WEIGHTS / "configs"
MANIFESTS = WEIGHTS / "manifests"
TOKENIZER = WEIGHTS / "tokenizers" / "clip-bpe"
