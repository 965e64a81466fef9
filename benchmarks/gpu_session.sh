#!/usr/bin/env bash
# Issue 18, part 5: everything a lent GPU is for, as ONE prepared run (device time is 15 minutes in all).
#   here, first:   bash benchmarks/gpu_wheels.sh
#   then:          the device tool's run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560)
# It writes under $OUT (what comes back): the benchmark table (benchmarks/gpu.py, budget-guarded, ~6 min), the
# data-parallel check on the GPU (benchmarks/gpu_ddp_check.py, 2 ranks sharing it, under a minute) and the logs.
# Commit the two tables into benchmarks/results/gpu/ and the figures into RESULTS.md "Fast path (issue 18)".
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=.:/tmp/site || exit 3
fi
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } \
  2>&1 | tee "$OUT/machine.txt"
status=0
timeout 450 python3 benchmarks/gpu.py --budget 330 --out "$OUT" 2>&1 | tee "$OUT/bench.log" || status=1
timeout 90 python3 benchmarks/gpu_ddp_check.py --out "$OUT" 2>&1 | tee "$OUT/ddp.log" || status=1
ls -la "$OUT"
exit $status
