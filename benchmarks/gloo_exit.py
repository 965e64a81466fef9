"""How often a gloo rank crashes at exit, by the way it ends (the reason for ``distributed.leave``).

Each trial launches 2 gloo ranks (``qtkit.training.distributed.launch``) that join the group, all-reduce 20 times,
all-gather one object, and end in one of four ways:

- ``plain``: joined with ``torch.distributed.init_process_group``; the interpreter exits normally without tearing
  the group down (what a plain script does);
- ``return``: joined with ``distributed.init_from_env`` (which registers the teardown to run at exit); the
  interpreter exits normally;
- ``leave``: ``distributed.leave(0, together=False)`` (no teardown, ``os._exit``: a rank's error path);
- ``together``: ``distributed.leave(0, together=True)`` (barrier, ``destroy_process_group``, ``os._exit``).

A trial is bad when the launcher's status is not 0 (a rank killed by SIGABRT: "terminate called without an active
exception"). Command: ``PYTHONPATH=. .venv/bin/python benchmarks/gloo_exit.py --trials 30``; results in RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from qtkit.training.distributed import launch

RANK = ("import torch, torch.distributed as dist; from qtkit.training import distributed; "
        "{join}; t = torch.ones(1000); [dist.all_reduce(t) for _ in range(20)]; "
        "dist.all_gather_object([None, None], 1); {end}")
QTKIT_JOIN = "distributed.init_from_env()"
#: how a rank joins and ends, by name
ENDS = {"plain": ("dist.init_process_group('gloo')", "pass"), "return": (QTKIT_JOIN, "pass"),
        "leave": (QTKIT_JOIN, "distributed.leave(0, together=False)"),
        "together": (QTKIT_JOIN, "distributed.leave(0, together=True)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--ends", nargs="+", default=list(ENDS), choices=list(ENDS))
    args = parser.parse_args()
    rows = []
    for end in args.ends:
        bad, start = 0, time.perf_counter()
        for _ in range(args.trials):
            said: list[str] = []
            join, finish = ENDS[end]
            code = launch([RANK.format(join=join, end=finish)] * 2, 2, echo=said.append,
                          program=(sys.executable, "-c", "import sys; exec(sys.argv[1].replace('; ', chr(10)))"))
            bad += code != 0
        rows.append((end, bad, time.perf_counter() - start))
        print(f"{end}: {bad} of {args.trials} trials crashed", flush=True)
    print("\n| how a rank ends | crashed | trials |\n|---|---:|---:|")
    for end, bad, _ in rows:
        print(f"| {end} | {bad} | {args.trials} |")


if __name__ == "__main__":
    main()
