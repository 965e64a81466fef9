"""The reference QT code's loss and optimiser conventions (ALGORITHMS.md §2, §4; issue [1/5] point 1).

Each test names the convention and fails on the deviation it guards against:
- L_DT is ``F.mse_loss``: a MEAN over action dimensions (a sum makes eta depend on the action size);
- the next-state term is a mean over observation dimensions, only where the next state is in the window;
- the critic's gradient is clipped at ``grad_clip`` unless ``critic_grad_clip`` says otherwise;
- ``optimizer: adam`` + ``decay_all_parameters`` is torch Adam with L2 decay on every policy weight;
- the cosine LR can span more steps than the run and change once per ``lr_update_every`` steps.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import qtkit
from qtkit.agents.base import TrainConfig, lr_schedule_update, make_lr_scheduler
from tests.conftest import TINY, build_component, pendulum_dataset


def reference_bc_loss(pred_a, pred_s, actions, states, mask):
    """The reference's actor BC loss (ql_trainer.py), written independently: F.mse_loss over the valid
    positions' action entries + the next-state MSE of positions whose successor is valid in the window."""
    action_loss = F.mse_loss(pred_a[mask], actions[mask])
    has_next = mask[:, :-1] & mask[:, 1:]
    state_loss = ((pred_s[:, :-1] - states[:, 1:]) ** 2)[has_next].mean()
    return action_loss, state_loss


def window(b: int = 4, k: int = 6, obs: int = 5, act: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, k + 1, obs, generator=g)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[1, 4:] = False  # a short window (right-padded)
    mask[2, 1:] = False  # a window of one position: it has no next state
    return {
        "pred_a": torch.randn(b, k, act, generator=g), "actions": torch.randn(b, k, act, generator=g),
        "pred_s": torch.randn(b, k, obs, generator=g), "states": states[:, :k], "next_states": states[:, 1:],
        "mask": mask,
    }


def policy(next_state_weight: float = 1.0):
    return build_component("policy", {"type": "gpt", "predict_next_state": True, "next_state_weight": next_state_weight})


def test_bc_and_next_state_losses_match_the_reference_formulas() -> None:
    w = window()
    loss, metrics = policy().bc_loss(w["pred_a"], w["pred_s"], w["actions"], w["next_states"], w["mask"])
    action_ref, state_ref = reference_bc_loss(w["pred_a"], w["pred_s"], w["actions"], w["states"], w["mask"])
    torch.testing.assert_close(metrics["bc_loss"], action_ref)
    torch.testing.assert_close(metrics["next_state_loss"], state_ref)
    torch.testing.assert_close(loss, action_ref + state_ref)


def test_bc_loss_is_a_mean_over_action_dimensions() -> None:
    """The same per-entry error gives the same loss for 1 and 3 action dimensions (a sum would triple it)."""
    for act in (1, 3):
        pred = torch.full((2, 4, act), 0.5)
        target = torch.zeros(2, 4, act)
        mask = torch.ones(2, 4, dtype=torch.bool)
        p = build_component("policy", {"type": "gpt", "predict_next_state": False}, act_dim=act,
                            action_low=[-1.0] * act, action_high=[1.0] * act)
        loss, _ = p.bc_loss(pred, None, target, torch.zeros(2, 4, 5), mask)
        assert float(loss) == pytest.approx(0.25), act


def test_next_state_loss_ignores_positions_without_a_next_state_in_the_window() -> None:
    """An error only at each window's last valid position (no successor in the window) costs nothing;
    padded positions (NaN garbage) are ignored; errors elsewhere are averaged over obs dimensions."""
    w = window()
    mask = w["mask"]
    pred_s = w["next_states"].clone()
    last = mask.sum(1) - 1
    rows = torch.arange(mask.shape[0])
    pred_s[rows, last] += 7.0  # wrong only where no next state is in the window
    pred_s[~mask] = float("nan")
    _, metrics = policy().bc_loss(w["actions"], pred_s, w["actions"], w["next_states"], mask)
    assert float(metrics["next_state_loss"]) == 0.0
    pred_s[0, 0] += 2.0  # one error of 2 on every one of the 5 obs dimensions, at one of the 3+5+... positions
    _, metrics = policy().bc_loss(w["actions"], pred_s, w["actions"], w["next_states"], mask)
    has_next = int((mask[:, :-1] & mask[:, 1:]).sum())
    assert float(metrics["next_state_loss"]) == pytest.approx(4.0 / has_next)


def clip_calls(monkeypatch: pytest.MonkeyPatch, **train: object) -> list[float | None]:
    """The clip norms the agent's two optimizer steps use in one training step (critic first)."""
    calls: list[float | None] = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    data = pendulum_dataset(episodes=3, length=10)
    agent = qtkit.build("qt-gpt-nstep", dataset=data, **{**TINY, **train})
    agent.fit(data, steps=1, progress=False)
    return calls


def test_critic_gradients_are_clipped_at_grad_clip_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert clip_calls(monkeypatch, grad_clip=0.7) == [0.7, 0.7]


def test_critic_grad_clip_overrides_or_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert clip_calls(monkeypatch, grad_clip=0.7, critic_grad_clip=3.0) == [3.0, 0.7]
    assert clip_calls(monkeypatch, grad_clip=0.7, critic_grad_clip=None) == [0.7]  # critic: no clip call


def test_clipping_bounds_the_critic_update() -> None:
    """Behaviourally: with SGD (momentum; its first step is lr * grad) and a tiny clip, the critic moves <= lr * clip."""
    data = pendulum_dataset(episodes=3, length=10)
    kwargs = {**TINY, "optimizer": "momentum", "critic_lr": 1.0, "critic_weight_decay": 0.0, "scheduler": "none",
              "eta": 0.0}
    agent = qtkit.build("qt-gpt-nstep", dataset=data, grad_clip=1e-3, **kwargs)
    before = torch.cat([p.detach().flatten().clone() for p in agent.critic.net.parameters()])
    agent.fit(data, steps=1, progress=False)
    after = torch.cat([p.detach().flatten() for p in agent.critic.net.parameters()])
    assert float((after - before).norm()) <= 1e-3 * 1.0001


def test_reference_optimizer_is_adam_with_l2_on_every_policy_weight() -> None:
    data = pendulum_dataset(episodes=3, length=10)
    ref = qtkit.build("qt-gpt-nstep", dataset=data, optimizer="adam", decay_all_parameters=True, weight_decay=1e-4,
                      **TINY)
    ref.fit(data, steps=1, progress=False)
    opt = ref.policy_optimizer
    assert type(opt) is torch.optim.Adam  # L2 through the gradient, not AdamW's decoupled decay
    decayed = sum(p.numel() for g in opt.param_groups if g["weight_decay"] == 1e-4 for p in g["params"])
    assert decayed == sum(p.numel() for p in ref.policy.parameters())

    default = qtkit.build("qt-gpt-nstep", dataset=data, weight_decay=1e-4, **TINY)
    default.fit(data, steps=1, progress=False)
    exempt = [p for g in default.policy_optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert exempt and all(p.dim() <= 1 for p in exempt)  # biases and norm weights, and only those


def test_per_iteration_cosine_matches_torch_cosine_annealing_stepped_per_iteration() -> None:
    """The reference: CosineAnnealingLR(T_max=max_iters) stepped after every iteration of ``every`` steps,
    with the run stopped early after ``stop`` steps (maze2d: 51 of 100 iterations -> LR ~0.48x at the end)."""
    lr, every, iterations, stop = 3e-4, 10, 100, 510
    param = torch.nn.Parameter(torch.zeros(1))
    reference_opt = torch.optim.Adam([param], lr=lr)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(reference_opt, T_max=iterations)
    expected = []
    for step in range(stop):
        expected.append(reference_opt.param_groups[0]["lr"])
        if (step + 1) % every == 0:
            reference_opt.step()  # (no gradients: a no-op, keeps torch's call-order check quiet)
            reference.step()
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    config = TrainConfig(scheduler="cosine", lr=lr, lr_schedule_steps=every * iterations, lr_update_every=every)
    sched = make_lr_scheduler(optimizer, config, stop, lr)
    got = []
    for step in range(stop):
        got.append(optimizer.param_groups[0]["lr"])
        lr_schedule_update(sched, step + 1, every)  # as the agent does after gradient step `step`
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got[-1] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 50 / 100)))


@pytest.mark.parametrize(("steps", "expected"), [(3, 1e-3), (4, 0.5e-3), (7, 0.5e-3)])
def test_agents_hold_the_lr_between_updates(steps: int, expected: float) -> None:
    """Cosine over 8 steps updated every 4: flat at lr for steps 1-3, then cos(pi * 4/8) * lr until step 8."""
    data = pendulum_dataset(episodes=3, length=10)
    agent = qtkit.build("qt-gpt-nstep", dataset=data, **{**TINY, "lr": 1e-3, "scheduler": "cosine", "warmup_steps": 0,
                                                          "lr_update_every": 4, "lr_schedule_steps": 8})
    agent.fit(data, steps=8, until=steps, progress=False)
    assert agent.policy_optimizer.param_groups[0]["lr"] == pytest.approx(expected)


@pytest.mark.parametrize("value", [0, -5])
def test_bad_lr_update_every_is_a_config_error(value: int) -> None:
    with pytest.raises(qtkit.errors.ConfigError, match="lr_update_every"):
        qtkit.build("qt-gpt-nstep", obs_dim=2, act_dim=1, lr_update_every=value)
