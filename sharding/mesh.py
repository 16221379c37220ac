"""Device meshes built from config, for any device count, single- or multi-host."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from r1jax.errors import UserError
from r1jax.sharding import MESH_AXES
from r1jax.sharding.rules import PRESETS, Rules, check_rules


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """Mesh shape and rules. One axis may be -1: it takes the devices the others leave."""

    data: int = 1
    fsdp: int = -1
    expert: int = 1
    tensor: int = 1
    preset: str = "fsdp_expert_tensor"  # see sharding.rules.PRESETS
    rules: Optional[dict[str, list[str]]] = None  # per-name overrides of the preset's table

    def logical_rules(self) -> "Rules":
        """The logical-to-mesh table this config names: its preset with its per-name overrides."""
        return Rules.preset(self.preset, self.rules)

    def __post_init__(self) -> None:

        sizes = [getattr(self, a) for a in MESH_AXES]
        for axis, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise UserError(f"sharding.{axis}={size}: a mesh axis size must be >= 1 or -1 (fill)")
        if sizes.count(-1) > 1:
            raise UserError("sharding: at most one mesh axis may be -1 (fill with the remaining devices)")
        if self.preset not in PRESETS:
            raise UserError(f"sharding.preset={self.preset!r}: unknown; choose one of {', '.join(PRESETS)}")
        check_rules(self.rules, "sharding.rules")

    def shape_for(self, num_devices: int) -> tuple[int, ...]:
        """The mesh shape for `num_devices`, resolving -1; errors name the axes that do not fit."""
        sizes = [getattr(self, a) for a in MESH_AXES]
        fixed = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % fixed:
                raise UserError(
                    f"sharding: the fixed mesh axes ({_describe(sizes)}) multiply to {fixed}, which does not "
                    f"divide the {num_devices} devices")
            sizes[sizes.index(-1)] = num_devices // fixed
        elif fixed != num_devices:
            raise UserError(
                f"sharding: mesh {_describe(sizes)} needs {fixed} devices but {num_devices} are present")
        return tuple(sizes)


def _describe(sizes) -> str:
    return ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))


def build_mesh(config: ShardingConfig, devices: Optional[list] = None) -> Mesh:
    """A mesh over `devices` (default: all devices of all processes) with the config's shape."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.shape_for(len(devices))
    if jax.process_count() > 1 and devices[0].platform != "cpu":
        device_array = _multihost_device_array(shape, devices)
    else:
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _multihost_device_array(shape, devices):
    from jax.experimental import mesh_utils

    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, NotImplementedError, ValueError):
        return np.asarray(devices).reshape(shape)


def batch_axes(mesh: Mesh, rules: Rules) -> tuple[str, ...]:
    """The mesh axes that split a batch's rows (the rules' "batch" axes present in this mesh)."""
    return tuple(a for a in rules.mesh_axes("batch") if a in mesh.shape)


def check_batch_rows(rows: int, mesh: Mesh, rules: Rules, what: str = "a batch") -> tuple[str, ...]:
    """The batch axes, after checking that `rows` splits evenly over them (UserError naming both if not)."""
    axes = batch_axes(mesh, rules)
    ways = math.prod(mesh.shape[a] for a in axes)
    if rows % ways:
        raise UserError(f"{what} of {rows} rows does not split over the {ways} data-parallel devices "
                        f"({'x'.join(axes)}); make it a multiple of {ways}")
    return axes
