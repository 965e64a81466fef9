"""The contract of the ``policy`` kind: every registered policy passes these tests (d3rlpy-style shared test).

A policy maps a window ``states [B, K, obs]``, ``actions [B, K, act]``, ``rtg [B, K]``, ``timesteps [B, K]``
(long) and ``mask [B, K]`` to ``(actions [B, K, act] within [action_low, action_high], next-state prediction
[B, K, obs] or None)``. It is deterministic in eval mode, round-trips its state through safetensors, and
either trains by behaviour cloning (``bc_loss``: then every parameter learns from one step) or has no
parameters at all and acts through an attached critic (``ar-argmax`` decodes an ``ar-q`` critic; the
agent attaches it, as :class:`qtkit.agents.qtransformer.QTransformerAgent` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import qtkit
from qtkit.registry import get_component
from tests.conftest import CONTEXT, SMALL_BACKBONE, build_component

NAMES = qtkit.list_components("policy")
OBS, ACT = CONTEXT["obs_dim"], CONTEXT["act_dim"]
LOW, HIGH = torch.tensor(CONTEXT["action_low"]), torch.tensor(CONTEXT["action_high"])
B, K = 3, 5


def make_policy(name: str, *, dropout: float = 0.0, seed: int = 0, **context: Any) -> nn.Module:
    """A small policy in eval mode (its backbone, if any, is SMALL_BACKBONE with ``dropout``; embedding dropout
    too). A policy that acts through a critic (``attach``) gets a small ``ar-q`` critic with the same dropout."""
    torch.manual_seed(seed)
    entry = get_component("policy", name)
    spec: dict[str, Any] = {"type": name}
    if "embed_dropout" in entry.parameters():
        spec["embed_dropout"] = dropout
    ctx = {**CONTEXT, **context}
    if "backbone" in entry.context():
        context["backbone"] = build_component("backbone", {**SMALL_BACKBONE, "dropout": dropout})
    policy = build_component("policy", spec, **context)
    if hasattr(policy, "attach"):
        backbone = build_component("backbone", {**SMALL_BACKBONE, "dropout": dropout})
        critic = build_component("critic", {"type": "ar-q", "bins": 16, "floor": 0.0}, backbone=backbone,
                                 **{k: ctx[k] for k in ("obs_dim", "act_dim", "action_low", "action_high")})
        with torch.no_grad():  # larger weights than the 0.02 init: greedy actions then depend on the state
            for pname, p in critic.net.named_parameters():
                if "ln" not in pname:
                    p.normal_(0.0, 0.5)
        policy.attach(critic)
    return set_mode(policy, train=False)


def set_mode(policy: nn.Module, train: bool) -> nn.Module:
    """Train/eval mode for the policy and, for one that acts through an attached critic, that critic
    (the rollout puts both in eval mode: qtkit/agents/evaluation.py)."""
    policy.train(train)
    if hasattr(policy, "attach"):
        policy.critic.train(train)
    return policy


def window(seed: int = 0, b: int = B, k: int = K) -> dict[str, torch.Tensor]:
    """A window batch: row 0 full, row 1 left-padded (episode start), row 2 right-padded (episode end);
    padded positions hold zeros, as sample_windows gives them."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, k, dtype=torch.bool)
    if b >= 3 and k >= 3:
        mask[1, :2] = False
        mask[2, -2:] = False
    states = torch.randn(b, k, OBS, generator=gen) * mask.unsqueeze(-1)
    actions = (LOW + torch.rand(b, k, ACT, generator=gen) * (HIGH - LOW)) * mask.unsqueeze(-1)
    rtg = torch.randn(b, k, generator=gen) * mask
    timesteps = (torch.arange(k) + torch.randint(0, 50, (b, 1), generator=gen)) * mask
    return {"states": states, "actions": actions, "rtg": rtg, "timesteps": timesteps.long(), "mask": mask}


def run(policy: nn.Module, w: dict[str, torch.Tensor], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    return policy(w["states"], w["actions"], w["rtg"], w["timesteps"], w["mask"], **kwargs)


def trains_by_bc(policy: nn.Module) -> bool:
    return callable(getattr(policy, "bc_loss", None))


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_builds_from_defaults(name: str) -> None:
    entry = get_component("policy", name)
    policy = build_component("policy", name)
    assert isinstance(policy, entry.target) and isinstance(policy, nn.Module)
    assert (policy.obs_dim, policy.act_dim) == (OBS, ACT)
    torch.testing.assert_close(policy.action_low, LOW, rtol=0, atol=0)  # a buffer: saved with the weights
    torch.testing.assert_close(policy.action_high, HIGH, rtol=0, atol=0)
    assert {"action_low", "action_high"} <= set(dict(policy.named_buffers()))
    params = list(policy.parameters())
    if trains_by_bc(policy):  # trained by behaviour cloning: it has weights, all trainable, all float32
        assert sum(p.numel() for p in params) > 1000
        assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    else:  # acts through an attached critic (ar-argmax): no weights of its own
        assert params == [] and callable(getattr(policy, "attach", None))


def test_output_shapes_dtypes_and_bounds(name: str) -> None:
    policy = make_policy(name)
    w = window()
    with torch.no_grad():
        actions, next_states = run(policy, w)
    assert actions.shape == (B, K, ACT) and actions.dtype == torch.float32
    assert torch.isfinite(actions).all()
    assert (actions >= LOW).all() and (actions <= HIGH).all()
    if next_states is not None:
        assert next_states.shape == (B, K, OBS) and next_states.dtype == torch.float32
        assert torch.isfinite(next_states).all()
    # one step (the first action of an episode) and one environment
    with torch.no_grad():
        first, _ = run(policy, window(b=1, k=1))
    assert first.shape == (1, 1, ACT)


def test_gpt_options_of_the_forward_pass() -> None:
    """``predict_next=False`` drops the next-state prediction, ``last_only`` gives the last position only:
    the requested outputs equal the full pass's (gpt.py's docstring); without ``predict_next_state`` there
    is never a next-state prediction."""
    policy = make_policy("gpt")
    w = window()
    with torch.no_grad():
        full, next_states = run(policy, w)
        no_next, none = run(policy, w, predict_next=False)
        last, none_too = run(policy, w, last_only=True)
    assert next_states is not None and none is None and none_too is None
    assert last.shape == (B, 1, ACT)
    torch.testing.assert_close(no_next, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-5)
    plain = build_component("policy", {"type": "gpt", "predict_next_state": False}).eval()
    assert plain.next_state_head is None and run(plain, w)[1] is None


def test_deterministic_in_eval_mode_with_dropout(name: str) -> None:
    policy = make_policy(name, dropout=0.5)
    w = window()
    with torch.no_grad():
        a1, n1 = run(policy, w)
        a2, n2 = run(policy, w)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    if n1 is not None:
        torch.testing.assert_close(n1, n2, rtol=0, atol=0)
    # the dropout is real: in train mode two passes differ (so the equality above is not vacuous)
    set_mode(policy, train=True)
    with torch.no_grad():
        outputs = [run(policy, w)[0] for _ in range(3)]
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_state_dict_round_trips_through_safetensors(name: str, tmp_path: Path) -> None:
    policy = make_policy(name)
    state = {k: v.contiguous() for k, v in policy.state_dict().items()}
    if not trains_by_bc(policy):  # the critic's weights are saved once, under the critic (ar_argmax.py)
        assert set(state) == {"action_low", "action_high"}
    path = tmp_path / "policy.safetensors"
    save_file(state, str(path))
    # a fresh instance: another initialisation and other bounds, which loading must overwrite
    other = make_policy(name, seed=123, action_low=(LOW - 1).tolist(), action_high=(HIGH + 1).tolist())
    if hasattr(policy, "attach"):
        other.attach(policy.critic)
    assert not torch.equal(other.action_low, policy.action_low)
    other.load_state_dict(load_file(str(path)))
    w = window()
    with torch.no_grad():
        a, n = run(policy, w)
        a_other, n_other = run(other, w)
    torch.testing.assert_close(a_other, a, rtol=0, atol=0)
    if n is not None:
        torch.testing.assert_close(n_other, n, rtol=0, atol=0)


def test_one_optimisation_step_trains_every_parameter(name: str) -> None:
    """One Adam step on the policy's own loss (``bc_loss``, next-state term included) gives every parameter
    a finite gradient that is nonzero somewhere, and changes every parameter.

    (Only embedding rows of the timesteps in the batch, and of course only valid positions, get gradient:
    "nonzero somewhere" allows that.)"""
    policy = make_policy(name, dropout=0.1)
    if not trains_by_bc(policy):
        assert list(policy.parameters()) == []
        pytest.skip(f"policy {name!r} has no parameters: it is trained through its critic (test_contract_critic.py)")
    set_mode(policy, train=True)
    named = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert named == dict(policy.named_parameters())  # every parameter is trainable
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = torch.optim.Adam(named.values(), lr=1e-3)
    w = window()
    next_states = torch.randn(B, K, OBS, generator=torch.Generator().manual_seed(5))
    predicted, predicted_next = run(policy, w)
    loss, metrics = policy.bc_loss(predicted, predicted_next, w["actions"], next_states, w["mask"])
    assert loss.shape == () and torch.isfinite(loss)
    assert "bc_loss" in metrics and all(not v.requires_grad for v in metrics.values())
    optimizer.zero_grad()
    loss.backward()
    no_grad = [n for n, p in named.items() if p.grad is None or not bool((p.grad != 0).any())]
    not_finite = [n for n, p in named.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    assert no_grad == [], f"parameters with no gradient: {no_grad}"
    assert not_finite == [], f"parameters with a non-finite gradient: {not_finite}"
    optimizer.step()
    unchanged = [n for n, p in named.items() if torch.equal(p.detach(), before[n])]
    assert unchanged == [], f"parameters the step did not change: {unchanged}"


def test_bc_loss_ignores_padded_positions() -> None:
    """Whatever a padded position predicts (even NaN), ``bc_loss`` and its gradient stay finite and equal."""
    policy = make_policy("gpt")
    w = window()
    predicted, predicted_next = run(policy, w)
    next_states = torch.randn(B, K, OBS)
    clean, _ = policy.bc_loss(predicted, predicted_next, w["actions"], next_states, w["mask"])
    dirty = predicted.detach().clone()
    dirty[~w["mask"]] = float("nan")
    dirty_next = predicted_next.detach().clone()
    dirty_next[~w["mask"]] = float("nan")
    loss, _ = policy.bc_loss(dirty, dirty_next, w["actions"], next_states, w["mask"])
    torch.testing.assert_close(loss, clean.detach(), rtol=1e-6, atol=0)


def test_a_critic_policy_needs_its_critic() -> None:
    """A policy without parameters acts only through an attached critic, and reads the critic's weights at
    every call (no copy): changing the critic changes its actions."""
    for name in NAMES:
        policy = build_component("policy", name)
        if trains_by_bc(policy):
            continue
        with pytest.raises(qtkit.ConfigError, match="attach"):
            run(policy, window())
        attached = make_policy(name)
        assert not any(isinstance(m, nn.Module) and m is attached.critic for m in attached.modules())
        w = window()
        before = run(attached, w)[0]
        with torch.no_grad():
            for p in attached.critic.net.parameters():
                p.add_(torch.randn_like(p))
        assert not torch.equal(run(attached, w)[0], before)
