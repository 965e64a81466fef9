"""The contract every registered backup passes (the generic one is in test_contracts.py).

``backup(batch, next_values, next_valid=None) -> (targets, valid)``: two ``[B, K]`` tensors
(float in the batch's dtype, bool), finite, 0 where not valid, ``valid`` within ``batch.mask``.
"""

from __future__ import annotations

import math

import pytest
import torch

import qtkit
from qtkit.backups import Backup
from tests.conftest import CONTEXT, build_component
from tests.reference_backups import make_batch

BACKUPS = qtkit.list_components("backup")
B, K = 4, 6


def realistic_batch(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[object, torch.Tensor]:
    """A batch with a full row, left padding (episode start), right padding ending on a terminal
    (episode end) and a short row; padded positions hold NaN/inf to catch any leak."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
            [1, 1, 1, 1, 0, 0],
            [0, 1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    terminals = torch.zeros(B, K, dtype=torch.bool)
    terminals[2, 3] = True  # the episode of row 2 ends inside the window
    rewards = torch.randn(B, K, generator=gen, dtype=dtype)
    returns = torch.randn(B, K, generator=gen, dtype=dtype) * 10
    next_values = torch.randn(B, K, generator=gen, dtype=dtype) * 10
    rewards[~mask] = math.nan
    returns[~mask] = math.inf
    next_values[~mask] = -math.inf
    return make_batch(rewards, terminals, mask, returns), next_values


@pytest.mark.parametrize("name", BACKUPS)
class TestBackupContract:
    def test_is_a_backup_with_a_bool_needs_next_values(self, name: str) -> None:
        backup = build_component("backup", name)
        assert isinstance(backup, Backup) and callable(backup)
        assert isinstance(backup.needs_next_values, bool)
        assert type(backup).needs_next_values is backup.needs_next_values  # a class attribute
        assert backup.gamma == CONTEXT["gamma"]
        assert backup.name == name

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_targets_and_valid(self, name: str, dtype: torch.dtype) -> None:
        backup = build_component("backup", name)
        batch, next_values = realistic_batch(dtype)
        for next_valid in (None, batch.mask):
            targets, valid = backup(batch, next_values, next_valid)
            assert targets.shape == (B, K) and valid.shape == (B, K)
            assert targets.dtype == dtype and valid.dtype == torch.bool
            assert targets.isfinite().all()
            assert (targets[~valid] == 0).all()
            assert not (valid & ~batch.mask).any()
            assert valid.any()
            assert bool(valid[2, 3])  # a terminal step always has a target

    def test_next_values_only_when_needed(self, name: str) -> None:
        backup = build_component("backup", name)
        batch, next_values = realistic_batch(torch.float64)
        if backup.needs_next_values:
            with pytest.raises(ValueError, match="next_values"):
                backup(batch)
        else:
            with_values = backup(batch, next_values)
            without = backup(batch)
            assert torch.equal(with_values[0], without[0]) and torch.equal(with_values[1], without[1])

    def test_the_last_step_of_a_window_needs_a_next_value(self, name: str) -> None:
        """By default the bootstrap state after the window's last step is unknown: no target."""
        backup = build_component("backup", name)
        batch, next_values = realistic_batch(torch.float64)
        _, valid = backup(batch, next_values)
        if backup.needs_next_values:
            assert not valid[:, -1].any() and not valid[3, 2]
        else:
            assert torch.equal(valid, batch.mask)

    def test_does_not_modify_its_inputs(self, name: str) -> None:
        backup = build_component("backup", name)
        batch, next_values = realistic_batch(torch.float64)
        before = {k: v.clone() for k, v in batch.as_dict().items()}
        values_before = next_values.clone()
        backup(batch, next_values)
        for key, value in batch.as_dict().items():
            assert torch.equal(value.nan_to_num(), before[key].nan_to_num()), key
        assert torch.equal(next_values.nan_to_num(), values_before.nan_to_num())
