"""Official-file recognition: the size and SHA-256 of every weight file of the official repos, read from their
git-lfs pointers (minunet.weights LFS_POINTERS.tsv)."""
import hashlib
from pathlib import Path

from ..weights import CONFIGS


def official_files():
    """{size in bytes: [(repo path, sha256)]} from the git-lfs pointers of the official repos."""
    table = {}
    for line in (CONFIGS / "LFS_POINTERS.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, size, sha = line.split("\t")[:3]
        table.setdefault(int(size), []).append((path, sha.strip()))
    return table


def sha256(path, progress=True):
    from tqdm import tqdm

    h = hashlib.sha256()
    size = Path(path).stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="sha256", disable=not progress,
                                     leave=False) as bar:
        while chunk := f.read(1 << 24):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()
