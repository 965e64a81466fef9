"""Sweeps: presets and peers × datasets × seeds as independent trials on Ray (``pip install 'qtkit[sweep]'``).

>>> from qtkit.sweep import load_sweep, run_sweep
>>> spec = load_sweep("benchmarks/suites/smoke.yaml")     # validates everything first (all problems at once)
>>> result = run_sweep(spec)                               # doctest: +SKIP

``qtkit sweep FILE.yaml`` is the command-line form. Importing this package does not import Ray.
"""

from qtkit.sweep.runner import make_datasets, require_ray, run_sweep
from qtkit.sweep.spec import Method, SweepDataset, SweepError, SweepSpec, Trial, expand_trials, load_sweep, parse_sweep
from qtkit.sweep.trial import read_status, run_trial

__all__ = [
    "Method",
    "SweepDataset",
    "SweepError",
    "SweepSpec",
    "Trial",
    "expand_trials",
    "load_sweep",
    "make_datasets",
    "parse_sweep",
    "read_status",
    "require_ray",
    "run_sweep",
    "run_trial",
]
