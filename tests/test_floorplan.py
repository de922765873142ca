"""The floor plan as rules (issue 19), measured on the source by benchmarks/floorplan.py: imports only look down,
no import cycle (imports inside functions counted), the image UNet and everything it imports under 1,000 lines,
no function over 60 lines and a median under 10, at most 8 modules directly in minunet/."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("floorplan", ROOT / "benchmarks" / "floorplan.py")
floorplan = importlib.util.module_from_spec(spec)
sys.modules["floorplan"] = floorplan
spec.loader.exec_module(floorplan)


@pytest.fixture(scope="module")
def figures():
    return floorplan.figures(ROOT / "minunet")


def test_no_import_cycle(figures):
    assert figures["cycles"] == []


def test_imports_look_down(figures):
    assert figures["layer_violations"] == []


def test_image_unet_pulls_in_under_1000_lines(figures):
    assert figures["unet_module"] == "minunet.models.unet"
    assert figures["unet_lines"] < 1000, figures["unet_modules"]
    assert not any(m.startswith(("minunet.loading", "minunet.pipelines", "minunet.cli")) for m in figures["unet_modules"])


def test_function_lengths(figures):
    assert figures["long_functions"] == []
    assert figures["median_function"] < 10


def test_at_most_8_modules_directly_in_the_package(figures):
    assert len(figures["flat_modules"]) <= 8, figures["flat_modules"]


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checks can fail: a two-module cycle through a late import, and a model importing a loader."""
    pkg = tmp_path / "minunet"
    for folder in ("models", "loading"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "unet.py").write_text("def f():\n    from ..loading import io\n")
    (pkg / "loading" / "io.py").write_text("from ..models.unet import f\n")
    f = floorplan.figures(pkg)
    assert f["cycles"] == [["minunet.loading.io", "minunet.models.unet"]]
    assert f["layer_violations"] == ["minunet.models.unet imports minunet.loading.io (models looks up at loading)"]
