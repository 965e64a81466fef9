"""Training windows: where they start (the sampling schemes, as pure vectorised index maths) and
:func:`sample_windows`, which gathers them from a ``TrajectoryDataset`` into a ``Batch``.

A window is K consecutive steps of one episode, placed left-aligned in a row of K positions and
padded on the right. Three schemes (``scheme=`` of ``TrajectoryDataset.sample_windows``):

``"uniform"`` (default): every step of the dataset is equally likely to appear in a window.
    Consider every placement of a K-window that overlaps an episode of length T, i.e. the
    T + K - 1 starts s in [-(K-1), T-1]; each covers steps [max(s, 0), min(s + K, T)). Every
    step lies in exactly K of these placements, so drawing one placement uniformly among all
    placements of all episodes covers every step with the same probability
    K / sum_i (T_i + K - 1). Consequences: an episode is drawn with probability
    ∝ T + K - 1 (∝ its length for T >> K), no window crosses an episode, and a window is
    shorter than K (right padding) when it overlaps an end of its episode (or T < K).
    A placement that starts before the episode keeps its valid steps left-aligned
    (steps 0 .. s+K-1 at positions 0 .. s+K-1): with causal attention this is the context the
    policy sees at the start of an evaluation episode.
``"reference"``: the reference DT/QT rule: episode ∝ T, start uniform in [0, T-1], right
    padding. Steps near the start of an episode appear less often (step t is covered by
    min(t+1, K) starts).
``"inside"``: episode ∝ T, start uniform in [0, max(0, T-K)]: full windows only (padding only
    when T < K). Steps within K-1 of either end appear less often.

Random numbers come from a ``numpy.random.Generator``, a ``torch.Generator`` (any device), an int
seed (a fresh ``numpy.random.default_rng(seed)`` per call, so the same seed gives the same
windows) or None (fresh entropy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qtkit.data.batch import Batch
from qtkit.data.frames import take_frames

if TYPE_CHECKING:
    from qtkit.data.dataset import TrajectoryDataset

SCHEMES = ("uniform", "reference", "inside")

__all__ = ["SCHEMES", "RandomSource", "episode_weights", "sample_window_starts", "sample_windows"]


class RandomSource:
    """Uniform draws from a numpy Generator, a torch Generator, an int seed or None."""

    def __init__(self, generator: Any = None) -> None:
        self._torch = None
        if generator is None or (isinstance(generator, int | np.integer) and not isinstance(generator, bool)):
            self._np = np.random.default_rng(None if generator is None else int(generator))
            return
        if isinstance(generator, np.random.Generator):
            self._np = generator
            return
        if isinstance(generator, torch.Generator):
            self._torch = generator
            self._np = None
            return
        raise TypeError(
            f"generator must be a numpy.random.Generator, a torch.Generator, an int seed or None, got "
            f"{type(generator).__name__}; e.g. numpy.random.default_rng(0) or torch.Generator().manual_seed(0)."
        )

    def integers(self, high: int, size: int) -> np.ndarray:
        """``size`` int64 draws uniform in [0, high)."""
        if self._torch is not None:
            out = torch.randint(0, int(high), (size,), generator=self._torch, device=self._torch.device)
            return out.cpu().numpy().astype(np.int64, copy=False)
        assert self._np is not None
        return self._np.integers(0, int(high), size=size, dtype=np.int64)

    def random(self, size: int) -> np.ndarray:
        """``size`` float64 draws uniform in [0, 1)."""
        if self._torch is not None:
            out = torch.rand((size,), generator=self._torch, device=self._torch.device, dtype=torch.float64)
            return out.cpu().numpy()
        assert self._np is not None
        return self._np.random(size)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown window scheme {scheme!r}; choose one of {list(SCHEMES)}.")


def episode_weights(lengths: np.ndarray, K: int, scheme: str = "uniform") -> np.ndarray:
    """The probability ``[E]`` that a window comes from each episode under ``scheme``."""
    _check_scheme(scheme)
    lengths = np.asarray(lengths, dtype=np.float64)
    w = lengths + (K - 1) if scheme == "uniform" else lengths
    return w / w.sum()


def sample_window_starts(
    lengths: np.ndarray,
    offsets: np.ndarray,
    batch_size: int,
    K: int,
    rng: RandomSource,
    scheme: str = "uniform",
    slot_offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``batch_size`` windows: ``(episode [B], first step [B], valid length [B])``, all int64.

    ``lengths [E]`` are the episode lengths, ``offsets [E+1]`` their cumulative sum (starting at 0).
    Window b holds steps ``first[b] .. first[b] + valid[b] - 1`` of episode ``episode[b]`` at
    positions ``0 .. valid[b] - 1``; ``1 <= valid[b] <= K``. ``slot_offsets`` is an optional cache
    of ``[0, cumsum(lengths + K - 1)]`` for the uniform scheme.
    """
    _check_scheme(scheme)
    if scheme == "uniform":
        if slot_offsets is None:
            slot_offsets = np.concatenate([[0], np.cumsum(lengths + (K - 1))]).astype(np.int64)
        u = rng.integers(int(slot_offsets[-1]), batch_size)
        episode = np.searchsorted(slot_offsets, u, side="right") - 1
        s = u - slot_offsets[episode] - (K - 1)  # in [-(K-1), T-1]
        first = np.maximum(s, 0)
        valid = np.minimum(s + K, lengths[episode]) - first
        return episode, first, valid
    u = rng.integers(int(offsets[-1]), batch_size)
    episode = np.searchsorted(offsets, u, side="right") - 1
    T = lengths[episode]
    if scheme == "reference":
        first = u - offsets[episode]
    else:  # inside
        n_starts = np.maximum(T - K + 1, 1)
        first = np.minimum((rng.random(batch_size) * n_starts).astype(np.int64), n_starts - 1)
    valid = np.minimum(K, T - first)
    return episode, first, valid


def check_window_arguments(dataset: TrajectoryDataset, K: Any, rtg_scale: Any, frame_stack: Any,
                           scheme: str | None = None) -> None:
    """The checks both samplers (this module's and :class:`~qtkit.data.device_windows.DeviceWindowSampler`) make of
    their window arguments: a ``ValueError`` naming the bad one."""
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, int | np.integer) or frame_stack < 1:
        raise ValueError(f"frame_stack must be an int >= 1, got {frame_stack!r}.")
    if frame_stack > 1 and not dataset.is_image:
        raise ValueError(f"frame_stack={frame_stack} stacks image frames; {dataset.name} has vector observations.")
    if isinstance(K, bool) or not isinstance(K, int | np.integer) or K < 1:
        raise ValueError(f"K (the window length, context) must be an int >= 1, got {K!r}.")
    scale = float(rtg_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"rtg_scale must be a finite number > 0, got {rtg_scale!r}.")
    if scheme is not None:
        _check_scheme(scheme)


def sample_windows(
    dataset: TrajectoryDataset,
    batch_size: int,
    K: int,
    generator: Any = None,
    rtg_scale: float = 1.0,
    *,
    scheme: str = "uniform",
    device: str | torch.device | None = None,
    rows: slice | None = None,
    frame_stack: int = 1,
) -> Batch:
    """``batch_size`` windows of ``K`` steps of ``dataset`` as a :class:`Batch` (all ``[B, K, ...]``).

    The body of :meth:`TrajectoryDataset.sample_windows` (see it for the arguments): draws the
    starts with :func:`sample_window_starts` and gathers the dataset's flat arrays, whose extra
    zero row at the end fills the padded positions. The uniform scheme's slot offsets are cached
    per K on the dataset. ``frame_stack`` F > 1 (image datasets): each position's observation is its last F
    frames, oldest first, ``[B, K, F, H, W, C]`` (the episode's first frame repeated before its start, as
    gymnasium's ``FrameStackObservation`` pads with the reset frame when ``padding_type="reset"``); same for
    ``next_observations``. ``rows``: draw the starts of all ``batch_size`` windows (the generator
    advances as for the whole batch) but gather only these rows (``[len(rows), K, ...]``): data-parallel ranks
    share one stream and each keeps its slice of the global batch.
    """
    check_window_arguments(dataset, K, rtg_scale, frame_stack)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    scale = float(rtg_scale)
    B, K = int(batch_size), int(K)
    rng = generator if isinstance(generator, RandomSource) else RandomSource(generator)
    lengths, offsets = dataset.episode_lengths, dataset.episode_offsets
    slots = None
    if scheme == "uniform":
        slots = dataset._slot_cache.get(K)
        if slots is None:
            slots = np.zeros(dataset.num_episodes + 1, dtype=np.int64)
            np.cumsum(lengths + (K - 1), out=slots[1:])
            dataset._slot_cache[K] = slots
    episode, first, valid = sample_window_starts(lengths, offsets, B, K, rng, scheme, slots)
    if rows is not None:
        episode, first, valid = episode[rows], first[rows], valid[rows]
        B = len(episode)
        if B == 0:
            raise ValueError(f"rows={rows!r} selects no window of a batch of {batch_size}.")

    k = np.arange(K, dtype=np.int64)
    mask = k[None, :] < valid[:, None]  # [B, K]
    steps = first[:, None] + k[None, :]  # absolute step index
    srow = np.where(mask, offsets[episode][:, None] + steps, dataset.num_steps).reshape(-1)
    orow = np.where(mask, (offsets[episode] + episode)[:, None] + steps, -1).reshape(-1)
    nrow = np.where(orow >= 0, orow + 1, -1)  # the zero row is the last one
    obs_dim, act_dim = dataset.obs_dim, dataset.act_dim

    def t(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(arr)

    rtg = dataset._rtg.take(srow).reshape(B, K)
    if scale != 1.0:
        rtg = rtg / np.float32(scale)
    if dataset.is_image:
        first_row = np.repeat(offsets[episode] + episode, K)  # each position's episode's first observation row
        observations, next_observations = _image_windows(dataset, orow, nrow, B, K, first_row, int(frame_stack))
    else:
        observations = t(dataset._obs.take(orow, axis=0).reshape(B, K, obs_dim))
        next_observations = t(dataset._obs.take(nrow, axis=0).reshape(B, K, obs_dim))
    batch = Batch(
        observations=observations,
        next_observations=next_observations,
        actions=t(dataset._act.take(srow, axis=0).reshape(B, K, act_dim)),
        rewards=t(dataset._rew.take(srow).reshape(B, K)),
        rtg=t(rtg),
        returns=t(dataset._returns.take(srow).reshape(B, K)),
        timesteps=t(np.where(mask, steps, 0)),
        terminals=t(dataset._term.take(srow).reshape(B, K)),
        mask=t(mask),
    )
    if dataset._proprio is not None:  # image + vector observations: the proprioceptive vectors of the same rows
        P = dataset._proprio.shape[1]
        batch.proprio = t(dataset._proprio.take(orow, axis=0).reshape(B, K, P))
        batch.next_proprio = t(dataset._proprio.take(nrow, axis=0).reshape(B, K, P))
    return batch if device is None else batch.to(device)


def _image_windows(
    dataset: TrajectoryDataset, orow: np.ndarray, nrow: np.ndarray, B: int, K: int, first_row: np.ndarray,
    frame_stack: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[B, K, H, W, C]`` observations and next observations (zeros at padded positions, ``orow``/``nrow``
    -1 there; ``[B, K, F, H, W, C]`` with ``frame_stack`` F > 1: rows ``r - F + 1 .. r``, none before the
    episode's ``first_row [B * K]``). Each frame is read once (a window's o_t and o_{t+1} rows, and the stacks,
    overlap), from memory or, for a lazy dataset, from its file (only these rows)."""
    shape = dataset.obs_shape
    valid = orow >= 0
    back = np.arange(frame_stack - 1, -1, -1, dtype=np.int64)  # F-1 .. 0: oldest frame first
    first = first_row[valid][:, None]
    rows_o = np.maximum(orow[valid][:, None] - back, first)  # [n, F]
    rows_n = np.maximum(nrow[valid][:, None] - back, first)
    wanted, inverse = np.unique(np.concatenate([rows_o, rows_n]).reshape(-1), return_inverse=True)
    got = take_frames(dataset._obs, wanted)[inverse].reshape(2, -1, frame_stack, *shape)
    stack = (frame_stack,) if frame_stack > 1 else ()
    obs = np.zeros((B * K, *stack, *shape), dtype=np.uint8)
    nxt = np.zeros((B * K, *stack, *shape), dtype=np.uint8)
    obs[valid] = got[0].reshape(-1, *stack, *shape)
    nxt[valid] = got[1].reshape(-1, *stack, *shape)
    return (torch.from_numpy(obs.reshape(B, K, *stack, *shape)),
            torch.from_numpy(nxt.reshape(B, K, *stack, *shape)))
