"""``qtkit.build``: preset (or file, or resolved config) + shapes + overrides -> agent."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from qtkit.config import SHAPE_KEYS, SLOTS, apply_overrides, load_preset, resolve_config
from qtkit.errors import ConfigError, MissingShapeError, ParameterTypeError
from qtkit.registry import CONTEXT_PARAMS, get_component


def _shapes_from_env(env: Any) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np

    if isinstance(env, str):
        env = gym.make(env)
    obs_space = getattr(env, "single_observation_space", None) or env.observation_space
    act_space = getattr(env, "single_action_space", None) or env.action_space
    if not isinstance(act_space, gym.spaces.Box):
        raise ConfigError(
            f"env action space {act_space} is not continuous (Box); qtkit's policies and critics "
            "support bounded continuous (Box) actions only. The Q-Transformer critic 'ar-q' discretises each "
            "continuous dimension into bins itself; a Discrete or MultiDiscrete space is not supported: wrap "
            "the env so it takes a Box action (e.g. one dimension per choice, decoded by argmax)."
        )
    from qtkit.data.spaces import image_key, observation_parts

    key = image_key(obs_space)
    extra: dict[str, Any] = {}
    if key is not None:  # a Dict with an image part: the frames, plus its vector parts as the proprioceptive vector
        parts = observation_parts(obs_space, key)
        if len(parts) > 1:
            extra = {"proprio_dim": sum(size for _, size, role in parts if role == "proprio"),
                     "observation_parts": parts}
        obs_space = obs_space.spaces[key]
    image = isinstance(obs_space, gym.spaces.Box) and obs_space.dtype == np.uint8 and len(obs_space.shape) == 3
    return {
        **extra,
        "obs_dim": int(gym.spaces.flatdim(obs_space)),
        "obs_shape": [int(s) for s in obs_space.shape] if image else [int(gym.spaces.flatdim(obs_space))],
        "act_dim": int(np.prod(act_space.shape)),
        "action_low": [float(x) for x in np.asarray(act_space.low, dtype=np.float64).reshape(-1)],
        "action_high": [float(x) for x in np.asarray(act_space.high, dtype=np.float64).reshape(-1)],
    }


def _shapes_from_dataset(dataset: Any) -> dict[str, Any]:
    import numpy as np

    obs_shape = getattr(dataset, "obs_shape", None) or (int(dataset.obs_dim),)  # older dataset-like objects
    proprio_dim = int(getattr(dataset, "proprio_dim", 0) or 0)  # older dataset-like objects have none
    extra: dict[str, Any] = {"proprio_dim": proprio_dim, "observation_parts": dataset.observation_parts} if proprio_dim else {}
    return {
        **extra,
        "obs_dim": int(dataset.obs_dim),
        "obs_shape": [int(s) for s in obs_shape],
        "act_dim": int(dataset.act_dim),
        "action_low": [float(x) for x in np.asarray(dataset.action_low, dtype=np.float64).reshape(-1)],
        "action_high": [float(x) for x in np.asarray(dataset.action_high, dtype=np.float64).reshape(-1)],
    }


def resolve_shapes(
    preset: str,
    stored: Mapping[str, Any] | None,
    explicit: Mapping[str, Any],
    dataset: Any = None,
    env: Any = None,
) -> dict[str, Any]:
    """Merge shapes: explicit args > dataset > env > the config's stored ``shapes``."""
    shapes: dict[str, Any] = dict(stored or {})
    if env is not None:
        shapes.update(_shapes_from_env(env))
    if dataset is not None:
        shapes.update(_shapes_from_dataset(dataset))
    shapes.update({k: v for k, v in explicit.items() if v is not None})
    for key in ("obs_dim", "act_dim"):
        if shapes.get(key) is None:
            raise MissingShapeError(
                f"preset {preset!r}: {key} is unknown. Pass it (qtkit.build({preset!r}, obs_dim=11, "
                "act_dim=3)), or give dataset=... or env=... to read it from there."
            )
        value = shapes[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterTypeError(f"preset {preset!r}: {key} must be a positive int, got {value!r}.")
    import numpy as np

    obs_shape = shapes.get("obs_shape")
    obs_shape = [int(s) for s in (obs_shape if isinstance(obs_shape, Sequence) else [shapes["obs_dim"]])]
    if explicit.get("obs_shape") is None and int(np.prod(obs_shape)) != shapes["obs_dim"]:
        obs_shape = [shapes["obs_dim"]]  # an explicit obs_dim without a shape: a vector
    if any(s < 1 for s in obs_shape) or int(np.prod(obs_shape)) != shapes["obs_dim"]:
        raise ConfigError(
            f"preset {preset!r}: obs_shape {obs_shape} does not hold obs_dim={shapes['obs_dim']} values "
            "(one observation's shape, e.g. [64, 64, 3] for images or [obs_dim] for vectors)."
        )
    shapes["obs_shape"] = obs_shape
    act_dim = shapes["act_dim"]
    for key, fill in (("action_low", -1.0), ("action_high", 1.0)):
        value = shapes.get(key)
        if value is None:
            value = [fill] * act_dim
        elif isinstance(value, int | float):
            value = [float(value)] * act_dim
        elif isinstance(value, Sequence) or hasattr(value, "tolist"):
            value = [float(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
        else:
            raise ParameterTypeError(f"preset {preset!r}: {key} must be a number or a list, got {value!r}.")
        if len(value) != act_dim:
            raise ConfigError(
                f"preset {preset!r}: {key} has {len(value)} entries but act_dim is {act_dim}. "
                "Give one bound per action dimension (or a single number)."
            )
        shapes[key] = value
    if any(lo >= hi for lo, hi in zip(shapes["action_low"], shapes["action_high"], strict=True)):
        raise ConfigError(
            f"preset {preset!r}: every action_low must be below action_high, got "
            f"{shapes['action_low']} and {shapes['action_high']}."
        )
    out = {k: shapes[k] for k in SHAPE_KEYS}
    if shapes.get("proprio_dim"):  # image + vector observations (absent otherwise: configs stay as they were)
        out["proprio_dim"] = int(shapes["proprio_dim"])
        out["observation_parts"] = shapes.get("observation_parts")
    return out


def instantiate(kind: str, spec: Mapping[str, Any] | None, context: Mapping[str, Any]) -> Any:
    """Build one component from a resolved spec, passing the context params it asks for."""
    if spec is None:
        return None
    entry = get_component(kind, spec["type"])
    kwargs = {k: copy.deepcopy(v) for k, v in spec.items() if k != "type"}
    for name in entry.context():
        if name not in context or context[name] is None:
            raise ConfigError(f"{kind} {entry.name!r} needs {name!r} but the builder has none to give.")
        kwargs[name] = context[name]
    return entry.target(**kwargs)


def build(
    preset: str | Mapping[str, Any],
    *,
    obs_dim: int | None = None,
    act_dim: int | None = None,
    action_low: float | Sequence[float] | None = None,
    action_high: float | Sequence[float] | None = None,
    obs_shape: Sequence[int] | None = None,
    dataset: Any = None,
    env: Any = None,
    **overrides: Any,
) -> Any:
    """Build a complete agent.

    ``preset`` is a built-in preset name (``"qt-gpt-nstep"``), ``"file.yaml:name"``, or a resolved
    config dict (``agent.config``), which rebuilds an equal agent. Shapes come from the keyword
    arguments, a ``TrainingDataset``-like ``dataset`` or a gymnasium ``env`` (object or id).
    ``overrides`` swap a slot (``backup="one-step"``), change its params (``critic={"hidden": 512}``)
    or set training params (``eta=2.0``).
    """
    if isinstance(preset, Mapping):
        config = copy.deepcopy(dict(preset))
        config.setdefault("name", "<config>")
    elif isinstance(preset, str):
        config = load_preset(preset)
    else:
        raise ParameterTypeError(
            f"qtkit.build expects a preset name, 'file.yaml:name' or a config dict, got {type(preset).__name__}."
        )
    config = apply_overrides(config, overrides)
    resolved = resolve_config(config)
    shapes = resolve_shapes(
        resolved["name"],
        config.get("shapes"),
        {"obs_dim": obs_dim, "obs_shape": obs_shape, "act_dim": act_dim, "action_low": action_low,
         "action_high": action_high},
        dataset=dataset,
        env=env,
    )
    resolved["shapes"] = shapes
    context: dict[str, Any] = {
        **{k: v for k, v in shapes.items() if k != "observation_parts"},  # the layout is the agent's, at acting
        "proprio_dim": int(shapes.get("proprio_dim") or 0),
        "gamma": resolved["train"].get("gamma"),
        "rtg_scale": resolved["train"].get("rtg_scale"),
    }
    if resolved["train"].get("seed") is not None:
        import torch

        torch.manual_seed(int(resolved["train"]["seed"]))  # component initialisation is reproducible
    # the encoder first: policies and critics see its features (obs_dim = encoder.out_dim), never raw observations
    components: dict[str, Any] = {"encoder": instantiate("encoder", resolved["encoder"], context)}
    context = {**context, "obs_dim": int(components["encoder"].out_dim)}
    for slot in SLOTS:
        if slot in ("encoder", "backbone"):
            continue  # the backbone is built for the component that asks for it (below)
        slot_context = dict(context)
        entry_spec = resolved[slot]
        if entry_spec is not None and "backbone" in get_component(slot, entry_spec["type"]).context():
            if resolved["backbone"] is None:
                raise ConfigError(
                    f"preset {resolved['name']!r}: {slot} {entry_spec['type']!r} needs a backbone but "
                    "the 'backbone' slot is null. Name one (`qtkit list components`)."
                )
            slot_context["backbone"] = instantiate("backbone", resolved["backbone"], context)
        components[slot] = instantiate(slot, entry_spec, slot_context)
    assert not (set(context) - CONTEXT_PARAMS)
    agent_entry = get_component("agent", resolved["agent"])
    return agent_entry.target(config=resolved, **components)


def load(directory: str | Any, *, device: str | None = None) -> Any:
    """Restore an agent saved with ``agent.save(dir)`` (or a ``qtkit train --out`` run folder)."""
    from pathlib import Path

    from qtkit.checkpoint import read_checkpoint

    directory = Path(directory)
    if (directory / "checkpoint").is_dir() and not (directory / "config.yaml").is_file():
        directory = directory / "checkpoint"
    config, weights, state = read_checkpoint(directory)
    try:
        agent = build(config)
    except ConfigError as exc:
        from qtkit.errors import CheckpointError

        raise CheckpointError(f"cannot rebuild the agent of {str(directory / 'config.yaml')!r}: {exc} (Was the file "
                              "edited? Restore it, or train again.)") from None
    try:
        agent.load_weights(weights, state)
    except (RuntimeError, KeyError) as exc:
        from qtkit.errors import CheckpointError

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the weights in {str(directory / 'weights.safetensors')!r} do not fit the agent of its "
                              f"config.yaml ({first}). Restore the checkpoint's files together, or train again.") from None
    agent.to(device or agent.resolve_device(strict=False))  # a GPU run's checkpoint loads on a CPU-only machine
    return agent
