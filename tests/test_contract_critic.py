"""The contract of the ``critic`` kind: every registered critic passes these tests (d3rlpy-style shared test).

A critic is a module with an online ``net`` (the parameters the optimiser gets) and a ``target_net`` copy
that never trains: no gradient, never shared with the online net, and moved only by ``update_target(tau)``
(Polyak: ``target <- (1 - tau) * target + tau * online``). Documented inputs (twin_mlp.py, ar_q.py):

- ``forward(states, actions)``: window ``[B, K, obs]`` + ``[B, K, act]`` -> ``[M, B, K]`` and single
  ``[B, obs]`` + ``[B, act]`` -> ``[M, B]`` (M members / heads), differentiable;
- ``score(states, actions)``: the min over the target members, ``[...]`` (samplers score candidates
  ``[E, N, obs]`` + ``[E, N, act]`` -> ``[E, N]``);
- ``bootstrap(states, next_states, policy_actions, mask)`` -> ``(next_values [B, K] float, next_valid [B, K] bool)``;
- ``loss(states, actions, targets, valid, batch=batch)`` -> ``(scalar, metrics)`` with detached metrics.

Targets and scores never see dropout, and a critic round-trips its state (target and buffers included).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import qtkit
from qtkit.data import Batch
from qtkit.registry import get_component
from tests.conftest import CONTEXT, SMALL_BACKBONE, assert_same_critic_step, build_component

NAMES = qtkit.list_components("critic")
OBS, ACT = CONTEXT["obs_dim"], CONTEXT["act_dim"]
LOW, HIGH = torch.tensor(CONTEXT["action_low"]), torch.tensor(CONTEXT["action_high"])
B, K = 4, 5
#: Small sizes for each critic (the defaults are reference-sized); a new critic is tested at its defaults.
SMALL = {"twin-mlp": {"hidden": [32, 32]}, "ar-q": {"bins": 16}}


def make_critic(name: str, *, dropout: float = 0.0, seed: int = 0, defaults: bool = False, **params: Any) -> nn.Module:
    """A critic (small unless ``defaults``) ready to train, in eval mode; a backbone, if it needs one, is
    SMALL_BACKBONE with ``dropout``. ``prepare`` (ar-q's floor) gets a small dataset, as the agent does at fit."""
    torch.manual_seed(seed)
    context = {}
    if "backbone" in get_component("critic", name).context():
        context["backbone"] = build_component("backbone", {**SMALL_BACKBONE, "dropout": dropout})
    spec = {"type": name, **({} if defaults else SMALL.get(name, {})), **params}
    critic = build_component("critic", spec, **context)
    if callable(getattr(critic, "prepare", None)):
        rewards = np.linspace(-1.0, 1.0, 12)
        critic.prepare(SimpleNamespace(rewards=rewards, returns=rewards * 3, gamma=CONTEXT["gamma"],
                                       episode_lengths=np.array([6, 6])))
    return critic.eval()


def window_actions(*lead: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return LOW + torch.rand(*lead, ACT, generator=gen) * (HIGH - LOW)


def make_batch(seed: int = 0) -> Batch:
    """Windows with a full row, a left-padded row (episode start) and a right-padded row ending on a
    terminal (episode end); padded positions hold zeros, as ``sample_windows`` gives them."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, :2] = False
    mask[2, -2:] = False
    terminals = torch.zeros(B, K, dtype=torch.bool)
    terminals[2, K - 3] = True
    obs = torch.randn(B, K, OBS, generator=gen) * mask.unsqueeze(-1)
    next_obs = torch.cat((obs[:, 1:], torch.randn(B, 1, OBS, generator=gen)), dim=1) * mask.unsqueeze(-1)
    rewards = torch.randn(B, K, generator=gen) * mask
    return Batch(
        observations=obs, next_observations=next_obs, actions=window_actions(B, K, seed=seed) * mask.unsqueeze(-1),
        rewards=rewards, rtg=torch.zeros(B, K), returns=torch.randn(B, K, generator=gen) * 3 * mask,
        timesteps=torch.arange(K).expand(B, K).clone(), terminals=terminals, mask=mask,
    )


def targets_of(critic: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets as the agents make them: the critic's bootstrap, then a real backup (one-step)."""
    policy_actions = window_actions(B, K, seed=9)  # the EMA policy's actions (ignored by critics that decode)
    with torch.no_grad():
        next_values, next_valid = critic.bootstrap(batch.observations, batch.next_observations, policy_actions, batch.mask)
        return build_component("backup", "one-step")(batch, next_values.float(), next_valid)


def loss_of(critic: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    targets, valid = targets_of(critic, batch)
    return critic.loss(batch.observations, batch.actions, targets, valid, batch=batch)


def members(critic: nn.Module) -> int:
    return int(critic(torch.zeros(1, OBS), torch.zeros(1, ACT)).shape[0])


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_builds_from_defaults(name: str) -> None:
    entry = get_component("critic", name)
    critic = build_component("critic", name)
    assert isinstance(critic, entry.target) and isinstance(critic, nn.Module)
    assert isinstance(critic.net, nn.Module) and isinstance(critic.target_net, nn.Module)
    assert type(critic.target_net) is type(critic.net)
    assert isinstance(type(critic).needs_policy_actions, bool)
    online = dict(critic.net.named_parameters())
    target = dict(critic.target_net.named_parameters())
    assert sum(p.numel() for p in online.values()) > 1000
    # the trainable parameters are exactly the online net's; the target copy has the same structure and
    # starts equal, but owns its own memory and never asks for gradients
    assert {id(p) for p in critic.parameters() if p.requires_grad} == {id(p) for p in online.values()}
    assert all(not p.requires_grad for p in target.values())
    assert set(target) == set(online)
    online_storage = {p.untyped_storage().data_ptr() for p in online.values()}
    assert not online_storage & {p.untyped_storage().data_ptr() for p in target.values()}
    for key, value in critic.target_net.state_dict().items():
        torch.testing.assert_close(value, critic.net.state_dict()[key], rtol=0, atol=0, msg=key)


def test_output_shapes_and_dtypes(name: str) -> None:
    critic = make_critic(name)
    batch = make_batch()
    m = members(critic)
    assert m >= 1
    states, actions = batch.observations, batch.actions
    q = critic(states, actions)
    assert q.shape == (m, B, K) and q.dtype == torch.float32 and q.requires_grad and torch.isfinite(q).all()
    single = critic(states[:, 0], actions[:, 0])
    assert single.shape == (m, B) and single.dtype == torch.float32
    torch.testing.assert_close(single, q[:, :, 0], rtol=1e-5, atol=1e-5)  # position 0 sees one state either way
    scores = critic.score(states, actions)
    assert scores.shape == (B, K) and scores.dtype == torch.float32 and not scores.requires_grad
    # candidates as samplers give them: one state per env repeated over N candidate actions
    E, N = 3, 7
    candidate_states = torch.randn(E, 1, OBS).expand(-1, N, -1)
    assert critic.score(candidate_states, window_actions(E, N)).shape == (E, N)
    next_values, next_valid = critic.bootstrap(states, batch.next_observations, window_actions(B, K), batch.mask)
    assert next_values.shape == (B, K) and next_values.dtype == torch.float32 and torch.isfinite(next_values).all()
    assert next_valid.shape == (B, K) and next_valid.dtype == torch.bool
    assert next_valid[batch.mask].any()
    loss, metrics = loss_of(critic, batch)
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss) and loss.requires_grad
    assert "critic_loss" in metrics and all(not v.requires_grad and torch.isfinite(v) for v in metrics.values())


def test_deterministic_in_eval_mode_with_dropout(name: str) -> None:
    critic = make_critic(name, dropout=0.5)
    batch = make_batch()
    args = (batch.observations, batch.actions)
    with torch.no_grad():
        torch.testing.assert_close(critic(*args), critic(*args), rtol=0, atol=0)
        torch.testing.assert_close(critic.score(*args), critic.score(*args), rtol=0, atol=0)
    critic.train()
    # targets and scores come from the target copy, which never uses dropout, even while training
    torch.testing.assert_close(critic.score(*args), critic.score(*args), rtol=0, atol=0)
    torch.testing.assert_close(targets_of(critic, batch)[0], targets_of(critic, batch)[0], rtol=0, atol=0)
    if "backbone" in get_component("critic", name).context():  # the dropout is real: train-mode passes differ
        with torch.no_grad():
            assert not torch.equal(critic(*args), critic(*args))


def test_state_dict_round_trips_through_safetensors(name: str, tmp_path: Path) -> None:
    critic = make_critic(name)
    with torch.no_grad():  # a target that differs from the online net, so that both must be saved
        for p in critic.target_net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "critic.safetensors"
    save_file({k: v.contiguous() for k, v in critic.state_dict().items()}, str(path))
    torch.manual_seed(123)  # a different initialisation, never prepared
    context = {}
    if "backbone" in get_component("critic", name).context():
        context["backbone"] = build_component("backbone", SMALL_BACKBONE)
    other = build_component("critic", {"type": name, **SMALL.get(name, {})}, **context).eval()
    other.load_state_dict(load_file(str(path)))
    batch = make_batch()
    args = (batch.observations, batch.actions)
    with torch.no_grad():
        torch.testing.assert_close(other(*args), critic(*args), rtol=0, atol=0)
        torch.testing.assert_close(other.score(*args), critic.score(*args), rtol=0, atol=0)
        torch.testing.assert_close(loss_of(other, batch)[0], loss_of(critic, batch)[0], rtol=0, atol=0)


def test_one_optimisation_step(name: str) -> None:
    """One Adam step on the critic's own loss (bootstrap -> backup -> ``loss``) gives every trainable parameter
    a finite gradient that is nonzero somewhere and changes it; the target copy gets no gradient and does not
    move until ``update_target``, which then interpolates (tau 0: unchanged, 0.5: half-way, 1: a copy).

    (ar-q's bin embeddings get gradient only at the bins of the batch's actions: "nonzero somewhere".)"""
    critic = make_critic(name, dropout=0.1).train()
    trainable = {n: p for n, p in critic.named_parameters() if p.requires_grad}
    target_before = {k: v.clone() for k, v in critic.target_net.state_dict().items()}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-3)
    loss, _ = loss_of(critic, make_batch())
    optimizer.zero_grad()
    loss.backward()
    no_grad = [n for n, p in trainable.items() if p.grad is None or not bool((p.grad != 0).any())]
    not_finite = [n for n, p in trainable.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    assert no_grad == [], f"trainable parameters with no gradient: {no_grad}"
    assert not_finite == [], f"parameters with a non-finite gradient: {not_finite}"
    assert all(p.grad is None for p in critic.target_net.parameters()), "the target copy got a gradient"
    optimizer.step()
    unchanged = [n for n, p in trainable.items() if torch.equal(p.detach(), before[n])]
    assert unchanged == [], f"parameters the step did not change: {unchanged}"
    moved = [k for k, v in critic.target_net.state_dict().items() if not torch.equal(v, target_before[k])]
    assert moved == [], f"the target copy moved before update_target: {moved}"

    online = {k: v.detach().clone() for k, v in critic.net.state_dict().items()}
    critic.update_target(0.0)
    for key, value in critic.target_net.state_dict().items():
        torch.testing.assert_close(value, target_before[key], rtol=0, atol=0, msg=key)
    critic.update_target(0.5)
    differs = False
    for key, value in critic.target_net.state_dict().items():
        torch.testing.assert_close(value, (target_before[key] + online[key]) / 2, rtol=1e-5, atol=1e-7, msg=key)
        differs |= not torch.equal(value, target_before[key])
    assert differs
    critic.update_target(1.0)
    for key, value in critic.target_net.state_dict().items():
        torch.testing.assert_close(value, online[key], rtol=0, atol=1e-7, msg=key)
    for key, value in critic.net.state_dict().items():  # the online net is not touched by the target update
        assert torch.equal(value, online[key]), key
    assert all(not p.requires_grad for p in critic.target_net.parameters())


def test_static_shapes_change_only_the_summation_order(name: str) -> None:
    """``static_shapes`` (set from ``train.sync_free``): the same bootstrap values, loss, metrics and gradients as the
    default, up to float summation order (no dropout), on windows padded at both ends."""
    critic = make_critic(name).train()
    batch = make_batch()
    runs = []
    for static in (False, True):
        critic.static_shapes = static
        critic.net.zero_grad(set_to_none=True)
        values = targets_of(critic, batch)
        loss, metrics = loss_of(critic, batch)
        loss.backward()
        runs.append((values, loss.detach(), metrics, [p.grad for p in critic.net.parameters()]))
    assert_same_critic_step(*runs)


@pytest.mark.parametrize("preset", ["qt-gpt-nstep", "qt-gpt-arq", "qtransformer"])
def test_agents_keep_the_target_copy_frozen(preset: str) -> None:
    """The contract holds inside the agents too: after a training step the target copy still asks for no
    gradient. Regression: QTAgent.train_step switched the whole critic back to requires_grad after the L_Q pass,
    target copy included (harmless only while every target pass ran under no_grad)."""
    from tests.conftest import pendulum_dataset, tiny

    data = pendulum_dataset(episodes=3, length=8)
    agent = qtkit.build(preset, dataset=data, **tiny(preset))
    agent.fit(data, steps=1, progress=False)
    target = list(agent.critic.target_net.parameters())
    assert all(p.grad is None for p in target)
    assert not any(p.requires_grad for p in target)
