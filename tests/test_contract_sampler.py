"""The contract of the ``sampler`` kind: every registered sampler passes these tests (d3rlpy-style shared test).

A sampler turns a :class:`~qtkit.samplers.RolloutContext` of E parallel episodes (``states [E, K, obs]``,
``actions [E, K, act]``, ``timesteps [E, K]``, ``mask [E, K]`` left-padded, ``rtg [E, N, K]`` with N =
``num_rows``) into ``(actions [E, act], chosen row [E] long)`` with ``select(policy, critic, ctx, generator)``,
as :class:`qtkit.agents.evaluation.Rollout` calls it (policy and critic in eval mode). The actions lie inside
the action bounds; all randomness comes from ``generator`` (fixed generator, same actions); a sampler that
``needs_critic`` refuses to act without one; ``initial_rtg`` gives ``[E, num_rows]``. Then each sampler's own
options are checked against its docstring (qtkit/samplers/candidates.py, ar_greedy.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import qtkit
from qtkit.errors import ConfigError
from qtkit.registry import get_component
from qtkit.samplers import RolloutContext, Sampler
from qtkit.samplers.base import candidate_actions
from tests.conftest import SMALL_BACKBONE, build_component

NAMES = qtkit.list_components("sampler")
#: Environments of different shapes: (obs_dim, action_low, action_high).
ENVS = {
    "pendulum": (3, [-2.0], [2.0]),
    "asymmetric": (5, [-1.0, -2.0, 0.0], [1.0, 2.0, 1.0]),
    "positive": (4, [0.5, 0.0], [3.0, 0.25]),
}
E, K = 3, 4
TARGETS, RTG_SCALE = [100.0, 60.0], 10.0
#: The policy and critic each sampler works with (as in the presets); others: gpt + twin-mlp if it needs a critic.
PARTS = {"ar-greedy": ("ar-argmax", "ar-q"), "single-rtg": ("gpt", None)}
#: Options that make each sampler use its generator.
RANDOM = {"rtg-grid": {"selection": "softmax", "temperature": 1.0, "noise_std": 0.5},
          "gaussian": {"std": 0.5, "selection": "softmax", "temperature": 0.1},
          "ar-greedy": {"epsilon": 0.3, "temperature": 1.0}}
SMALL = {"rtg-grid": {"candidates": 6}, "gaussian": {"candidates": 6}}


def shapes(env: str) -> dict[str, Any]:
    obs_dim, low, high = ENVS[env]
    return {"obs_dim": obs_dim, "act_dim": len(low), "action_low": low, "action_high": high}


def make_sampler(name: str, env: str = "asymmetric", **params: Any) -> Sampler:
    return build_component("sampler", {"type": name, **SMALL.get(name, {}), **params}, rtg_scale=RTG_SCALE, **shapes(env))


def make_parts(name: str, env: str = "asymmetric", seed: int = 0) -> tuple[nn.Module, nn.Module | None]:
    """The sampler's policy and critic for ``env``, small, with weights large enough that actions and scores
    depend on the inputs, in eval mode (as the rollout puts them)."""
    policy_name, critic_name = PARTS.get(name, ("gpt", "twin-mlp" if make_sampler(name).needs_critic else None))
    torch.manual_seed(seed)
    ctx = shapes(env)
    critic = None
    if critic_name is not None:
        extra: dict[str, Any] = {}
        if "backbone" in get_component("critic", critic_name).context():
            extra["backbone"] = build_component("backbone", SMALL_BACKBONE)
        spec = {"type": critic_name, **({"bins": 16, "floor": 0.0} if critic_name == "ar-q" else {"hidden": [32, 32]})}
        critic = build_component("critic", spec, **ctx, **extra).eval()
    extra = {}
    if "backbone" in get_component("policy", policy_name).context():
        extra["backbone"] = build_component("backbone", SMALL_BACKBONE)
    policy = build_component("policy", policy_name, **ctx, **extra).eval()
    if hasattr(policy, "attach"):
        policy.attach(critic)
    with torch.no_grad():
        for module in (policy, critic):
            for pname, p in (module.named_parameters() if module is not None else []):
                if "ln" not in pname and "target" not in pname:
                    p.normal_(0.0, 0.5)
        if critic is not None:
            critic.update_target(1.0)
    return policy, critic


def make_context(sampler: Sampler, env: str = "asymmetric", seed: int = 0) -> RolloutContext:
    """E episodes: env 0 has a full K-step history, env 1 is at its second step, env 2 at its first
    (left-padded, as the rollout keeps them); every candidate row has its own return-to-go history."""
    obs_dim, low, high = ENVS[env]
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(E, K, dtype=torch.bool)
    mask[1, :-2] = False
    mask[2, :-1] = False
    low_t, high_t = torch.tensor(low), torch.tensor(high)
    actions = (low_t + torch.rand(E, K, len(low), generator=gen) * (high_t - low_t)) * mask.unsqueeze(-1)
    actions[:, -1] = 0.0  # the current step's action is not known yet
    rtg0 = sampler.initial_rtg(E, TARGETS, RTG_SCALE, torch.Generator().manual_seed(seed))  # [E, N]
    spent = torch.rand(E, 1, K, generator=gen).cumsum(-1).flip(-1)  # return already collected, decreasing
    return RolloutContext(
        states=torch.randn(E, K, obs_dim, generator=gen) * mask.unsqueeze(-1),
        actions=actions,
        timesteps=(torch.arange(K) - (~mask).sum(-1, keepdim=True)).clamp(min=0) * mask,
        mask=mask,
        rtg=(rtg0.unsqueeze(-1) + spent) * mask.unsqueeze(1),
    )


def select(sampler: Sampler, policy: nn.Module, critic: nn.Module | None, ctx: RolloutContext,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return sampler.select(policy, critic, ctx, torch.Generator().manual_seed(seed))


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_builds_from_defaults(name: str) -> None:
    sampler = build_component("sampler", name)
    entry = get_component("sampler", name)
    assert isinstance(sampler, entry.target) and isinstance(sampler, Sampler)
    assert isinstance(type(sampler).needs_critic, bool)
    assert isinstance(sampler.num_rows, int) and sampler.num_rows >= 1
    rtg = sampler.initial_rtg(E, TARGETS, RTG_SCALE, torch.Generator().manual_seed(0))
    assert rtg.shape == (E, sampler.num_rows) and rtg.dtype == torch.float32 and torch.isfinite(rtg).all()
    torch.testing.assert_close(rtg[:, 0], torch.full((E,), TARGETS[0] / RTG_SCALE))  # row 0: the first target


@pytest.mark.parametrize("env", list(ENVS))
def test_actions_inside_the_bounds_with_the_documented_shapes(name: str, env: str) -> None:
    sampler = make_sampler(name, env, **RANDOM.get(name, {}))
    policy, critic = make_parts(name, env)
    ctx = make_context(sampler, env)
    _, low, high = ENVS[env]
    before = {k: getattr(ctx, k).clone() for k in ("states", "actions", "timesteps", "mask")}
    for seed in range(3):
        actions, rows = select(sampler, policy, critic, ctx, seed)
        assert actions.shape == (E, len(low)) and actions.dtype == torch.float32 and torch.isfinite(actions).all()
        assert (actions >= torch.tensor(low)).all() and (actions <= torch.tensor(high)).all()
        assert rows.shape == (E,) and rows.dtype == torch.long and (rows >= 0).all()
    for key, value in before.items():  # the rollout's history is the rollout's to change
        assert torch.equal(getattr(ctx, key), value), key


def test_deterministic_for_a_fixed_generator(name: str) -> None:
    """Same generator seed, same actions, whatever the global RNG does in between; the random options do use
    the generator (another seed gives other actions)."""
    sampler = make_sampler(name, **RANDOM.get(name, {}))
    policy, critic = make_parts(name)
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        results.append(select(sampler, policy, critic, make_context(sampler), seed=7))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    assert torch.equal(results[0][1], results[1][1])
    if name in RANDOM:
        others = [select(sampler, policy, critic, make_context(sampler), seed=s)[0] for s in range(8)]
        assert any(not torch.equal(others[0], o) for o in others[1:])


def test_needs_critic_means_it(name: str) -> None:
    sampler = make_sampler(name)
    policy, critic = make_parts(name)
    ctx = make_context(sampler)
    if sampler.needs_critic:
        assert critic is not None
        with pytest.raises(ConfigError, match="critic"):
            select(sampler, policy, None, ctx)
    else:
        assert critic is None
        select(sampler, policy, None, ctx)


# ----------------------------------------------------------------------------- each sampler's options
def test_rtg_grid_options() -> None:
    sampler = make_sampler("rtg-grid", candidates=5, noise_std=0.0, selection="argmax", target_fractions=[1.0])
    assert sampler.num_rows == 5
    rtg = sampler.initial_rtg(E, TARGETS, RTG_SCALE, torch.Generator().manual_seed(0))
    expected = torch.tensor([10.0, 6.0, 10.0, 6.0, 10.0])  # the targets repeated over the rows, no noise
    torch.testing.assert_close(rtg, expected.expand(E, -1))
    noisy = make_sampler("rtg-grid", candidates=5, noise_std=0.5)
    rtg = noisy.initial_rtg(E, TARGETS, RTG_SCALE, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rtg[:, :2], expected[:2].expand(E, -1))  # the target rows stay exact
    assert (rtg[:, 2:] != expected[2:]).all()

    policy, critic = make_parts("rtg-grid")
    ctx = make_context(sampler)
    candidates = candidate_actions(policy, ctx)  # [E, N, act]: every row's own RTG gives its own action
    assert candidates.shape == (E, 5, 3)
    scores = critic.score(ctx.states[:, -1:].expand(-1, 5, -1), candidates)
    actions, rows = select(sampler, policy, critic, ctx)
    assert torch.equal(rows, scores.argmax(-1))  # argmax: the best-scored candidate
    torch.testing.assert_close(actions, candidates[torch.arange(E), rows], rtol=0, atol=0)

    follow = make_sampler("rtg-grid", candidates=5, noise_std=0.0, selection="argmax", q_rtg_row=True)
    ctx = make_context(follow)
    rtg_before = ctx.rtg.clone()
    select(follow, policy, critic, ctx)
    torch.testing.assert_close(ctx.rtg[:, -1, -1], scores.amax(-1) / RTG_SCALE)  # the last row follows Q
    assert torch.equal(ctx.rtg[:, :-1], rtg_before[:, :-1]) and torch.equal(ctx.rtg[:, -1, :-1], rtg_before[:, -1, :-1])


def test_single_rtg_options() -> None:
    sampler = make_sampler("single-rtg", target=42.0)
    assert sampler.targets == [42.0] and sampler.num_rows == 1 and not sampler.needs_critic
    assert make_sampler("single-rtg", target_fraction=0.5).target_fractions == [0.5]
    policy, _ = make_parts("single-rtg")
    ctx = make_context(sampler)
    actions, rows = select(sampler, policy, None, ctx)
    with torch.no_grad():
        full, _ = policy(ctx.states, ctx.actions, ctx.rtg[:, 0], ctx.timesteps, ctx.mask)
    torch.testing.assert_close(actions, full[:, -1], rtol=0, atol=1e-5)  # the policy's action at the current step
    assert (rows == 0).all()


def test_gaussian_options() -> None:
    policy, critic = make_parts("gaussian")
    exact = make_sampler("gaussian", std=0.0, candidates=4)
    ctx = make_context(exact)
    mean = candidate_actions(policy, ctx)[:, 0]
    torch.testing.assert_close(select(exact, policy, critic, ctx)[0], mean, rtol=0, atol=0)  # std 0: the policy's

    wide = make_sampler("gaussian", std=100.0, candidates=9, selection="argmax")
    actions, rows = select(wide, policy, critic, ctx, seed=3)
    low, high = policy.action_low, policy.action_high
    assert ((actions == low) | (actions == high)).any()  # clipped to the bounds
    assert (rows < 9).all()
    state = ctx.states[:, -1]
    chosen, unperturbed = critic.score(state, actions), critic.score(state, mean)
    assert (chosen >= unperturbed).all()  # argmax over candidates that include the policy's own action
    assert make_sampler("gaussian", target=5.0).targets == [5.0]


def test_gaussian_always_offers_the_policys_own_action() -> None:
    """Row 0 is the unperturbed action: with a critic whose score peaks at the policy's action and wide noise
    (every other candidate clipped to a corner), argmax must choose row 0, exactly the policy's action."""
    policy, _ = make_parts("gaussian")
    sampler = make_sampler("gaussian", std=100.0, candidates=9, selection="argmax")
    ctx = make_context(sampler)
    mean = candidate_actions(policy, ctx)[:, 0]  # [E, act]

    class PeakAtPolicyAction(nn.Module):
        def score(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:  # [E, N, obs], [E, N, act]
            return -((actions - mean.unsqueeze(1)) ** 2).sum(-1)  # [E, N]

    actions, rows = select(sampler, policy, PeakAtPolicyAction(), ctx, seed=3)
    assert (rows == 0).all()
    torch.testing.assert_close(actions, mean, rtol=0, atol=0)


def test_ar_greedy_options() -> None:
    policy, critic = make_parts("ar-greedy")
    greedy = make_sampler("ar-greedy")
    ctx = make_context(greedy)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    actions, rows = greedy.select(policy, critic, ctx, gen)
    assert torch.equal(gen.get_state(), state)  # epsilon 0, temperature 0: the generator is not touched
    bins, _ = critic.greedy(ctx.states[:, -critic.state_window:], ctx.mask[:, -critic.state_window:])
    torch.testing.assert_close(actions, critic.undiscretize(bins), rtol=0, atol=0)
    assert (rows == 0).all()

    uniform = make_sampler("ar-greedy", epsilon=1.0)
    decoded = torch.stack([select(uniform, policy, critic, ctx, seed=s)[0] for s in range(30)])  # [30, E, act]
    on_centres = critic.undiscretize(critic.discretize(decoded))
    torch.testing.assert_close(decoded, on_centres, rtol=0, atol=1e-6)  # always a bin centre
    assert (decoded != actions).any(-1).float().mean() > 0.8  # epsilon 1: uniform bins, rarely the greedy one
    assert make_sampler("ar-greedy", temperature=1e-6).select(policy, critic, ctx, gen)[0].allclose(actions)
