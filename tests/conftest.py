import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # `from helpers import ...`

# Tiny models gain nothing from intra-op threads, and OpenMP threads spin badly when another process shares
# the cores: one thread unless asked otherwise.
torch.set_num_threads(int(os.environ.get("MINUNET_TEST_THREADS", "1")))
