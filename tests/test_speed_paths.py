"""Every fast path gives the outputs (and gradients) of the plain computation it replaces.

- ``gpt2`` ``forward(..., positions=)`` (last layer at the read tokens only) == the full output indexed;
- an all-valid mask takes the unmasked kernels and matches the explicit-mask path;
- ``GPTPolicy`` (token pruning, ``predict_next=False``, ``last_only=True``) == the plain DT forward below;
- ``candidate_actions`` (identical rows computed once, last position only) == one plain policy call per row.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from qtkit.backbones.base import hidden_at
from qtkit.policies.base import Policy
from qtkit.samplers.base import RolloutContext, candidate_actions
from tests.conftest import build_component, token_sensitive

ATOL = 1e-5
W = 32


def backbone(causal: bool = True, depth: int = 2, heads: int = 2, name: str = "gpt2") -> torch.nn.Module:
    spec = {"type": name, "width": W, "depth": depth, "heads": heads, "dropout": 0.0, "causal": causal}
    return token_sensitive(build_component("backbone", spec))


def masks(b: int, n: int) -> dict[str, torch.Tensor | None]:
    left = torch.ones(b, n, dtype=torch.bool)
    left[0, :4] = False
    left[1, n - 3:] = False  # right-padded
    return {"none": None, "all-valid": torch.ones(b, n, dtype=torch.bool), "padded": left}


POSITIONS = {
    "states": lambda n: torch.arange(1, n, 3),
    "states+actions": lambda n: torch.arange(n).view(-1, 3)[:, 1:].reshape(-1),
    "last": lambda n: torch.tensor([n - 2]),
    "first-and-last": lambda n: torch.tensor([0, n - 1]),
}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mask_kind", ["none", "all-valid", "padded"])
@pytest.mark.parametrize("which", sorted(POSITIONS))
def test_gpt2_positions_equal_the_full_output(causal: bool, mask_kind: str, which: str) -> None:
    model = backbone(causal)
    b, n = 4, 12
    x = torch.randn(b, n, W, generator=torch.Generator().manual_seed(0))
    mask = masks(b, n)[mask_kind]
    positions = POSITIONS[which](n)
    full = model(x, mask)
    fast = model(x, mask, positions=positions)
    assert fast.shape == (b, len(positions), W)
    torch.testing.assert_close(fast, full[:, positions], rtol=0, atol=ATOL)
    torch.testing.assert_close(hidden_at(model, x, mask, positions), full[:, positions], rtol=0, atol=ATOL)


def test_gpt2_positions_give_the_same_gradients() -> None:
    model = backbone(depth=3).train()  # dropout 0: train mode takes the explicit attention path too
    b, n = 4, 12
    x = torch.randn(b, n, W, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mask = masks(b, n)["padded"]
    positions = POSITIONS["states+actions"](n)
    grads = []
    for fast in (False, True):
        model.zero_grad(set_to_none=True)
        x.grad = None
        out = model(x, mask, positions=positions) if fast else model(x, mask)[:, positions]
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for plain, fast in zip(*grads, strict=True):
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=ATOL)


def test_all_valid_mask_matches_the_masked_path() -> None:
    """Rows without padding give the same outputs whether the batch takes the masked or the unmasked path."""
    model = backbone()
    b, n = 4, 12
    x = torch.randn(b, n, W, generator=torch.Generator().manual_seed(0))
    padded = masks(b, n)["padded"]  # rows 2 and 3 are fully valid; rows 0 and 1 force the explicit mask
    explicit = model(x, padded)
    unmasked = model(x, torch.ones(b, n, dtype=torch.bool))
    torch.testing.assert_close(unmasked[2:], explicit[2:], rtol=0, atol=ATOL)
    torch.testing.assert_close(unmasked, model(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- policy
def policy(predict_next_state: bool = True, backbone_name: str = "gpt2") -> torch.nn.Module:
    spec = {"type": "gpt", "predict_next_state": predict_next_state, "embed_dropout": 0.0}
    bb = backbone(name=backbone_name)
    model = build_component("policy", spec, backbone=bb)
    return model.eval()


def plain_forward(model: torch.nn.Module, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
                  timesteps: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GPTPolicy.forward without any pruning: all 3K tokens through every layer (the reference code)."""
    t = model.embed_timestep(timesteps.clamp(0, model.max_timestep - 1))
    tokens = torch.stack((model.embed_return(rtg.unsqueeze(-1)) + t, model.embed_state(states) + t,
                          model.embed_action(actions) + t), dim=2)
    tokens = model.embed_drop(model.embed_ln(rearrange(tokens, "b k three w -> b (k three) w")))
    token_mask = None if mask is None else rearrange(torch.stack((mask,) * 3, dim=2), "b k three -> b (k three)")
    hidden = rearrange(model.backbone(tokens, token_mask), "b (k three) w -> b k three w", three=3)
    squashed = torch.tanh(model.action_head(hidden[:, :, 1]))
    action = model.action_low + (squashed + 1.0) * 0.5 * (model.action_high - model.action_low)
    next_state = model.next_state_head(hidden[:, :, 2]) if model.next_state_head is not None else None
    return action, next_state


def window(b: int = 5, k: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(b, k, 5, generator=gen)
    actions = torch.rand(b, k, 3, generator=gen)
    rtg = torch.randn(b, k, generator=gen)
    timesteps = torch.randint(0, 50, (b, k), generator=gen)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[0, 4:] = False  # right padding (training windows)
    mask[1, :2] = False  # left padding (rollout contexts)
    return states, actions, rtg, timesteps, mask


@pytest.mark.parametrize("backbone_name", ["gpt2", "xformer"])
@pytest.mark.parametrize("predict_next_state", [True, False])
@pytest.mark.parametrize("padded", [True, False])
def test_policy_fast_paths_equal_the_plain_forward(backbone_name: str, predict_next_state: bool, padded: bool) -> None:
    model = policy(predict_next_state, backbone_name)
    states, actions, rtg, timesteps, mask = window()
    mask = mask if padded else None
    with torch.no_grad():
        want_action, want_next = plain_forward(model, states, actions, rtg, timesteps, mask)
        action, next_state = model(states, actions, rtg, timesteps, mask)
        only_action, none = model(states, actions, rtg, timesteps, mask, predict_next=False)
        last, none_too = model(states, actions, rtg, timesteps, mask, last_only=True)
    torch.testing.assert_close(action, want_action, rtol=0, atol=ATOL)
    torch.testing.assert_close(only_action, want_action, rtol=0, atol=ATOL)
    torch.testing.assert_close(last, want_action[:, -1:], rtol=0, atol=ATOL)
    assert none is None and none_too is None
    if predict_next_state:
        torch.testing.assert_close(next_state, want_next, rtol=0, atol=ATOL)
    else:
        assert next_state is None and want_next is None


@pytest.mark.parametrize("predict_next_state", [True, False])
def test_policy_fast_path_gives_the_same_gradients(predict_next_state: bool) -> None:
    model = policy(predict_next_state).train()  # every dropout is 0
    states, actions, rtg, timesteps, mask = window()
    next_states = torch.randn_like(states)
    grads = []
    for forward in (plain_forward, type(model).forward):
        model.zero_grad(set_to_none=True)
        predicted, predicted_next = forward(model, states, actions, rtg, timesteps, mask)
        loss, _ = model.bc_loss(predicted, predicted_next, actions, next_states, mask)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    plain, fast = grads
    assert plain.keys() == fast.keys()
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-4, atol=ATOL, msg=name)


# ---------------------------------------------------------------------------------------- samplers
class PlainPolicy(Policy):
    """A policy that does not support ``last_only`` (the interface's default): candidate_actions must use
    the plain call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return plain_forward(self.inner, *args)


def context(e: int = 3, n: int = 7, k: int = 6, duplicates: bool = True) -> RolloutContext:
    states, actions, _, timesteps, mask = window(b=e, k=k)
    mask = torch.ones(e, k, dtype=torch.bool)
    mask[0, :3] = False  # an env early in its episode
    rtg = torch.randn(e, n, k, generator=torch.Generator().manual_seed(3))
    if duplicates:
        rtg[:, 3:6] = rtg[:, :3]  # rows 3-5 repeat rows 0-2 (noise_std 0)
        rtg[1] = rtg[0]  # two envs with the same rtg histories are still different rows
    return RolloutContext(states=states, actions=actions, timesteps=timesteps, mask=mask, rtg=rtg)


@pytest.mark.parametrize("duplicates", [True, False])
@pytest.mark.parametrize("supports_last_only", [True, False])
def test_candidate_actions_equal_one_plain_call_per_row(duplicates: bool, supports_last_only: bool) -> None:
    inner = policy()
    model = inner if supports_last_only else PlainPolicy(inner)
    ctx = context(duplicates=duplicates)
    with torch.no_grad():
        got = candidate_actions(model, ctx)
        e, n = ctx.num_envs, ctx.num_rows
        assert got.shape == (e, n, 3)
        for i in range(e):
            for r in range(n):
                want, _ = plain_forward(inner, ctx.states[i:i + 1], ctx.actions[i:i + 1], ctx.rtg[i, r:r + 1],
                                        ctx.timesteps[i:i + 1], ctx.mask[i:i + 1])
                torch.testing.assert_close(got[i, r], want[0, -1], rtol=0, atol=ATOL)
