#!/usr/bin/env bash
# Run here (not on the device machine) before a GPU session: downloads into .whl/ (ignored by git) the wheels of the
# packages the device image lacks (device/KINDS.md lists what it has): gymnasium and its Farama-Notifications, and
# annotated-types. The versions are constraints.txt's. Then benchmarks/gpu_session.sh, with carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
pin() { grep -i "^$1==" constraints.txt | head -1 | cut -d= -f3; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "gymnasium==$(pin gymnasium)" "farama-notifications==$(pin farama-notifications)" \
  "annotated-types==$(pin annotated-types)"
ls -la .whl
