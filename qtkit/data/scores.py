"""D4RL-style normalised scores (ALGORITHMS.md §7)."""

from __future__ import annotations

from typing import Any

import numpy as np

from qtkit.errors import DataError

__all__ = ["D4RL_REFERENCE_SCORES", "normalized_score"]

#: D4RL's reference returns (random policy, expert policy) per task family, from d4rl/infos.py;
#: pass them with ``load_dataset(path, ref_min_score=..., ref_max_score=...)`` for D4RL files.
D4RL_REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
}


def _d4rl_hint(name: str) -> str:
    key = name.lower().replace("_", "-").rsplit("/", 1)[-1]
    for family in sorted(D4RL_REFERENCE_SCORES, key=len, reverse=True):
        if key.startswith(family):
            lo, hi = D4RL_REFERENCE_SCORES[family]
            return f" D4RL's {family} values are ref_min_score={lo}, ref_max_score={hi}."
    return ""


def normalized_score(dataset: Any, returns: Any) -> float | np.ndarray:
    """``100 * (R - ref_min_score) / (ref_max_score - ref_min_score)``, D4RL's normalised score.

    ``dataset``: a ``TrajectoryDataset`` (or anything with ``metadata`` holding ``ref_min_score`` and
    ``ref_max_score``). ``returns``: one undiscounted episode return (-> float) or an array of them
    (-> float64 array of the same shape).
    """
    metadata = getattr(dataset, "metadata", None) or {}
    name = getattr(dataset, "name", None) or metadata.get("dataset_id") or "<dataset>"
    lo, hi = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if lo is None or hi is None:
        which = [k for k, v in (("ref_min_score", lo), ("ref_max_score", hi)) if v is None]
        raise DataError(
            f"dataset {name} has no reference scores ({' and '.join(which)} missing), so returns cannot be "
            "normalised. Pass them when loading (qtkit.data.load_dataset(spec, ref_min_score=..., "
            "ref_max_score=...)), store them in the file (HDF5 attributes or npz keys ref_min_score/ref_max_score) "
            "or in the Minari dataset (create_dataset_from_buffers(..., ref_min_score=..., ref_max_score=...))."
            + _d4rl_hint(str(name))
        )
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi == lo:
        raise DataError(
            f"dataset {name} has unusable reference scores ref_min_score={lo}, ref_max_score={hi}; they must be "
            "finite and different. Pass correct ones to qtkit.data.load_dataset(spec, ref_min_score=..., "
            "ref_max_score=...)."
        )
    if hasattr(returns, "detach") and hasattr(returns, "cpu"):  # torch tensor
        returns = returns.detach().cpu().numpy()
    arr = np.asarray(returns, dtype=np.float64)
    out = 100.0 * (arr - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out
