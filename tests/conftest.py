import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `from helpers import ...`

# Tiny models gain nothing from intra-op threads, and OpenMP threads spin badly when another process shares
# the cores: one thread unless asked otherwise.
torch.set_num_threads(int(os.environ.get("MINUNET_TEST_THREADS", "1")))

# Without a GPU the Triton kernels are tested through Triton's interpreter. The variable is read when a kernel is
# decorated, i.e. when minunet.kernels is first imported, which any test with FreeU may do: set it before all.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Tiny random pipelines saved in the diffusers layout, with minunet's Pipeline loaded from them (one per test module)
@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(folder, Pipeline) of a tiny SD 1.5-structured pipeline."""
    import pipes
    from minunet.pipelines.image import Pipeline

    folder = tmp_path_factory.mktemp("sd")
    pipes.sd_pipeline(folder)
    return folder, Pipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(base folder, refiner folder, base Pipeline, refiner Pipeline) of tiny SDXL-structured pipelines."""
    import pipes
    from minunet.pipelines.image import Pipeline

    base, refiner = tmp_path_factory.mktemp("xl"), tmp_path_factory.mktemp("xl_refiner")
    pipes.sdxl_pipeline(base)
    pipes.sdxl_pipeline(refiner, refiner=True)
    return base, refiner, Pipeline.from_pretrained(base), Pipeline.from_pretrained(refiner)
