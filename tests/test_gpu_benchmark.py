"""benchmarks/gpu.py, the one-run GPU benchmark, without a GPU: its budget skips and stops sections, a failing
section is reported and the next one runs, the report files are written, and the kernel check finds every decoder
input FreeU touches. (`python benchmarks/gpu.py --smoke --out DIR` runs every section's code path, ~2-3 min.)"""
import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu)


def test_no_budget_skips_every_section_and_writes_the_report(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--budget", "0", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert list(report["sections"]) == list(gpu.SECTIONS)
    assert all(s["status"] == "skipped: budget" for s in report["sections"].values())
    assert report["meta"]["torch"] and report["meta"]["smoke"] is True
    assert "kernel: skipped: budget" in (tmp_path / "gpu.md").read_text()
    assert "skipped: budget" in run.stdout


def test_a_failing_section_is_reported_and_a_long_one_stopped(tmp_path, monkeypatch):
    args = argparse.Namespace(out=str(tmp_path), smoke=True, budget=1000.0, compile_backend="aot_eager")
    run = gpu.Run(args)

    def fails(run, entry):
        entry["partial"] = 1
        raise RuntimeError("boom")
    gpu.run_section(run, "eager", fails)
    assert run.results["sections"]["eager"]["status"] == "error: RuntimeError: boom"
    assert "RuntimeError: boom" in (tmp_path / "errors.log").read_text()

    def too_long(run, entry):
        entry["measured"] = 1
        time.sleep(30)
    run.budget = time.perf_counter() - run.t0 + 1.0  # one second left
    monkeypatch.setitem(gpu.NEEDS, "freeu sd15", (0, 0))
    t0 = time.perf_counter()
    gpu.run_section(run, "freeu", too_long)
    assert time.perf_counter() - t0 < 10
    saved = json.loads((tmp_path / "gpu.json").read_text())["sections"]
    assert saved["freeu"] == {"measured": 1, "status": "stopped: budget", "seconds": saved["freeu"]["seconds"]}
    assert saved["eager"]["partial"] == 1


def test_kernel_rows_read_off_the_models():
    rows = gpu.kernel_rows(smoke=True)
    assert [r["model"] for r in rows[::2]] == list(gpu.kernel_models(True))  # two decoder inputs a model
    for r in rows:
        assert r["h"][0] == r["hs"][0] and r["h"][2:] == r["hs"][2:]
        assert r["conventions"] and (r["conventions"] == ["official"] or not r["model"].startswith("K-UNet"))
    assert {r["h"][0] for r in rows if r["model"].startswith("video")} == {2 * 3}  # batch x frames
