"""Compile a GRPO step (sampler, reference log-probs, update) for a TPU slice on this host, no TPU needed,
and report per-chip memory against HBM plus XLA's cost estimate. Exit 0 when it fits, 1 when it does not
(the other mesh presets are then tried and those that fit are listed). Needs libtpu: pip install 'r1jax[tpu]'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from r1jax.rl.cli.common import (add_config_arguments, check_context, positive_int, positive_number,
                                  split_config_and_overrides)

GIB = 2**30


INTERMIXED = True  # KEY=VALUE overrides after the options too (rl.cli.main.parse_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from r1jax.sharding.mesh_presets import MESH_PRESETS

    add_config_arguments(parser)
    parser.add_argument("--topology", required=True,
                        help="a Cloud TPU name (v5p-128, v6e-256, v5e-16) or a topology (v5p:4x4x4, v6e:16x16)")
    parser.add_argument("--mesh", default="config",
                        help=f"mesh preset: config (the config's sharding section) or one of "
                             f"{', '.join(MESH_PRESETS)}; default: config")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--prompt-len", type=positive_int, default=None,
                        help="prompt tokens, rounded up to a sampling.prompt_buckets bucket; default 512 "
                             "(or the largest bucket when smaller)")
    parser.add_argument("--new-tokens", type=positive_int, default=None,
                        help="sampled tokens per completion; default sampling.max_new_tokens")
    parser.add_argument("--micro-batches", type=positive_int, default=None,
                        help="update micro-batches; default update.micro_batches")
    parser.add_argument("--hbm-gib", type=positive_number, default=None,
                        help="judge against this HBM per chip (GiB) instead of the compiler's own figure (split "
                             "between a chip's devices: a v4 chip holds 2)")
    parser.add_argument("--no-alternatives", action="store_true",
                        help="when it does not fit, do not try the other mesh presets")


def hbm_per_device(gib_per_chip: float, topology) -> int:
    """--hbm-gib (per chip) as the bytes each compile-only device may use: a v4 chip holds 2 devices."""
    from r1jax.sharding.topology import DEVICES_PER_CHIP

    return int(gib_per_chip * GIB) // DEVICES_PER_CHIP[topology.kind]


def run(args: argparse.Namespace) -> int:
    _host_compiles_on_cpu()
    from r1jax.rl.config import load_config
    from r1jax.rl.aot import alternatives, compile_report, workload_for
    from r1jax.sharding.mesh_presets import resolve_mesh
    from r1jax.sharding.topology import device_hbm_bytes, parse_topology

    name, overrides = split_config_and_overrides(args.config, args.overrides)
    config = load_config(name, overrides)
    topology = parse_topology(args.topology)
    resolve_mesh(args.mesh, config.sharding)  # an unknown preset fails before anything compiles
    work = workload_for(config, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                        micro_batches=args.micro_batches)
    check_context(work.new_tokens, work.prompt_len, config.model.max_position_embeddings,
                  prompt="a prompt bucket", flags="--prompt-len, --new-tokens (or sampling.max_new_tokens)")
    hbm = (hbm_per_device(args.hbm_gib, topology), "override") if args.hbm_gib else device_hbm_bytes(topology)
    report = compile_report(config, topology, args.mesh, work, hbm)
    if not report.fits and not args.no_alternatives:
        report.alternatives = alternatives(config, topology, work, hbm, skip=args.mesh)
    print(json.dumps(report.to_dict(), indent=2) if args.json else describe(report.to_dict()))
    return 0 if report.fits else 1


def _host_compiles_on_cpu() -> None:
    """This host traces on its CPU; the TPU is only the compile target (never open a local TPU)."""
    if not os.environ.get("JAX_PLATFORMS"):
        os.environ["JAX_PLATFORMS"] = "cpu"
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_platforms", "cpu")


def describe(r: dict) -> str:
    topo, work = r["topology"], r["workload"]
    shape = " ".join(f"{k}={v}" for k, v in r["mesh_shape"].items())
    lines = [
        f"{topo['name']} ({topo['topology']}, {topo['chips']} chips, {topo['devices']} devices), mesh "
        f"{r['mesh']} ({shape}; rules {r['rules_preset']}{' + overrides' if r['rules_overrides'] else ''})",
        f"workload: {work['prompts']} prompts x {work['group_size']} = {work['rows']} rows of "
        f"{work['prompt_len']} + {work['new_tokens']} tokens, {work['micro_batches']} micro-batch(es)"
        + (f", decoded in {work['cache_phases']} cache phases" if work.get("cache_phases", 1) > 1 else ""),
        "dtypes: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["dtypes"].items()),
    ]
    own = r["sampler_devices"] > 0
    # memory is per compile-only device: a chip, but on v4 a TensorCore (libtpu makes 2 per v4 chip)
    chip = "chip" if topo["devices_per_chip"] == 1 else "device"
    if topo["devices_per_chip"] > 1:
        lines.append(f"memory per device: {topo['devices_per_chip']} devices per chip (libtpu's compile-only "
                     f"{topo['topology'].split(':')[0]} devices are TensorCores); steps per chip")
    if own:  # the breakdown's figures are per chip of the side that holds them
        sampler_parts = ("kv_cache", "sampler_temporaries")
        lines[0] += f"; the trainer on {r['trainer_chips']} chips, the sampler on {r['sampler_chips']} of its own"
        lines.append(f"per trainer {chip}: " + ", ".join(f"{k} {_gib(v)}" for k, v in r["breakdown"].items()
                                                      if k not in sampler_parts))
        lines.append(f"per sampler {chip}: " + ", ".join(f"{k} {_gib(r['breakdown'][k])}" for k in sampler_parts))
    else:
        lines.append(f"per {chip}: " + ", ".join(f"{k} {_gib(v)}" for k, v in r["breakdown"].items()))
    for name, p in r["programs"].items():
        cost = f", {p['flops']:.3g} flops" if p["flops"] else ""
        state = f"  REFUSED: {p['error']}" if p["error"] else ""
        beside = "alone on its chips" if own and name == "sampler" else "with resident state"
        lines.append(f"  {name:9s} {_gib(r['program_totals'][name])} {beside} "
                     f"(compiled in {p['compile_seconds']:.0f} s{cost}){state}")
    lines.append(r["sampler_layout"] + (f", a weight copy of {_gib(r['sampler_weight_bytes'])} per {chip}"
                                        if r["sampler_weight_bytes"] else ""))
    if r["decode"]:
        lines.append(describe_decode(r["decode"], r["workload"]["slots"] or r["workload"]["rows"]))  # a step's rows
    if r["update"]:
        lines.append(describe_update(r["update"]))
    verdict = "fits" if r["fits"] else "DOES NOT FIT"
    lines.append(f"peak {_gib(r['per_chip_bytes'])} of {_gib(r['hbm_bytes'])} HBM per {chip} "
                 f"({r['peak_program']}; HBM from {r['hbm_source']}): {verdict}")
    if r["alternatives"]:
        for alt in r["alternatives"]:
            size = f"{_gib(alt['per_chip_bytes'])}" if "per_chip_bytes" in alt else ""
            why = f" ({alt['reason']})" if "reason" in alt else ""
            lines.append(f"  mesh {alt['mesh']}: {'fits' if alt['fits'] else 'no'} {size}{why}")
        lines.append("meshes that fit: " + (", ".join(r["fitting_meshes"]) or "none"))
    return "\n".join(lines)


def describe_decode(d: dict, rows: int) -> str:
    moved = ", ".join(f"{k} {_size(v)}" for k, v in d["collective_bytes_per_token"].items() if v)
    ratio = d["est_vs_hbm_read_limit"]
    return "\n".join([
        f"decode step per chip (one token for each of {rows} rows): HBM {_size(d['hbm_bytes_per_token'])}, "
        f"collectives: {moved or 'none'}",
        f"  weight all-gathers in the decode loop: {d['weight_allgathers_per_token']} "
        f"({_size(d['weight_allgather_bytes_per_token'])})",
        f"  roofline: {_duration(d['est_step_s'])} per step (compute {_duration(d['est_compute_s'])}, HBM "
        f"{_duration(d['est_hbm_s'])}, collectives {_duration(d['est_collective_s'])}), "
        f"{d['est_tokens_per_s_per_chip']:.0f} tokens/s per chip; HBM-read limit "
        f"{_duration(d['hbm_read_limit_s'])}" + (f" ({ratio:.2f}x)" if ratio else "")
        + ("; below the limit: the compiled loop keeps weights or cache in on-chip memory (S(1)), which the limit "
           "counts as HBM reads" if ratio is not None and ratio < 1 else "")] + _assumed(d))


def _duration(seconds: float | None) -> str:
    """A decode step's part, three significant digits in ms or us (a small model's step is microseconds: it
    read "0.02 ms"); None: collectives not timed."""
    if seconds is None:
        return _seconds(None)
    return _in_units(seconds, (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)))


def describe_update(u: dict) -> str:
    moved = ", ".join(f"{k} {_size(v)}" for k, v in u["collective_bytes_per_chip"].items() if v)
    return "\n".join([
        f"update step per chip: {u['flops_per_chip']:.3g} FLOPs compiled ({u['model_flops_per_chip']:.3g} "
        f"model), HBM {_size(u['hbm_bytes_per_chip'])}, collectives: {moved or 'none'}",
        f"  roofline: {u['est_step_s']:.2f} s per step (compute {u['est_compute_s']:.2f}, HBM "
        f"{u['est_hbm_s']:.2f}, collectives {_seconds(u['est_collective_s'])}; {u['est_step_overlapped_s']:.2f} "
        f"if every collective overlaps), MFU {u['est_mfu']:.1%} ({u['est_mfu_overlapped']:.1%} overlapped)"]
        + _assumed(u))


def _assumed(report: dict) -> list[str]:
    """One line when the estimate counts loops whose trip count was not read from the program (assumed, or the
    caller's estimate for a traced bound)."""
    n, first = report["assumed_trip_counts"], (report["assumed_trips"] or [""])[0]
    return [f"  loop trip counts not read from the program: {n} assumed or estimated (e.g. {first})"] if n else []


def _seconds(seconds: float | None, scale: float = 1.0) -> str:
    """A roofline part; None: collectives not timed (the chip's ICI bandwidth is not published: v4)."""
    return "not timed: no published ICI bandwidth for this chip" if seconds is None else f"{seconds * scale:.2f}"


def _size(n: float) -> str:
    """Decimal units, from bytes to PB (decode-step figures span KB to tens of GB, an update's HBM bytes tens of
    TB), three significant digits without an exponent: 9,160 GB read "9.16 TB", not "9.16e+03 GB"."""
    return _in_units(n, (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)), whole="B")


def _in_units(n: float, units: tuple[tuple[str, float], ...], whole: str = "") -> str:
    """`n` in the largest of `units` (largest first) where it is at least 1 (else the last), three significant
    digits, rounded first (999.6 ms is "1 s"); thousands and the `whole` unit as integers."""
    for unit, scale in units:
        value = float(f"{n / scale:.3g}")
        if value >= 1 or unit == units[-1][0]:
            return f"{value:,.0f} {unit}" if value >= 1000 or unit == whole else f"{value:.3g} {unit}"
    raise AssertionError("unreachable")


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GIB:.2f} GiB"
