import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # `from helpers import ...`

# Tiny models gain nothing from intra-op threads, and OpenMP threads spin badly when another process shares
# the cores: one thread unless asked otherwise.
torch.set_num_threads(int(os.environ.get("MINUNET_TEST_THREADS", "1")))

# Without a GPU the Triton kernels are tested through Triton's interpreter. The variable is read when a kernel is
# decorated, i.e. when minunet.kernels is first imported, which any test with FreeU may do: set it before all.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
