"""``benchmarks/gpu.py --smoke`` runs on the CPU and writes its table (not timed: it checks the script stays alive)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpu_benchmark_smoke_writes_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--smoke", "--device", "cpu", "--presets", "dt-gpt,qt-gpt-nstep", "--variants",
                     "baseline,cudagraphs", "--steps", "1", "--warmup", "2", "--act-calls", "1",
                     "--out", str(tmp_path)]) == 0
    written = list(tmp_path.glob("smoke-cpu*.md"))
    assert len(written) == 1, written
    text = written[0].read_text()
    assert text in capsys.readouterr().out  # printed, and the same table written
    for preset in ("dt-gpt", "qt-gpt-nstep"):
        for variant in ("baseline", "cudagraphs"):
            assert f"| {preset} | B 8 x K 4 | {variant} |" in text, (preset, variant)
    assert "| baseline |" in text.split("Acting:")[1], "the 50-candidate acting latency is missing"
    assert list(tmp_path.iterdir()) == written, "only the table, no temporary file left behind"


def test_gpu_benchmark_refuses_unknown_variants(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        gpu.main(["--smoke", "--variants", "fp64", "--out", str(tmp_path)])
    assert caught.value.code == 2


def test_gpu_data_parallel_check_runs_on_the_cpu(tmp_path: Path) -> None:
    """``benchmarks/gpu_ddp_check.py`` (2 ranks against 1 process; on a GPU both ranks share it) stays alive: on
    the CPU it passes and writes its table."""
    done = subprocess.run([sys.executable, "benchmarks/gpu_ddp_check.py", "--device", "cpu", "--steps", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    text = (tmp_path / "ddp-check-cpu.md").read_text()
    assert text.count("| yes |") == 4 and "| NO |" not in text, text
