"""`r1jax compile`'s verdict: a program libtpu refused never fits; the sampler's inference copy sits beside
the training parameters; the layout's fit check counts the resident state."""

from r1jax.rl.aot import Workload, make_setup, sampler_layout, workload_for
from r1jax.rl.aot_report import Report
from r1jax.rl.config import load_config
from r1jax.sharding.compile_stats import ProgramStats
from r1jax.sharding.mesh import ShardingConfig
from r1jax.sharding.topology import parse_topology
from tests.rl.test_aot import _config_file

GIB = 2**30
RESIDENT = {"parameters": 10 * GIB, "optimizer": 20 * GIB, "reference": 10 * GIB}


def _report(programs, sampler_weight_bytes=0, hbm=95 * GIB):
    return Report(parse_topology("v5p:2x2x1"), "config", ShardingConfig(), {"fsdp": 4}, Workload(2, 4, 16, 8), hbm,
                  "override", dict(RESIDENT), 0, 0, programs, {}, sampler_layout="x",
                  sampler_weight_bytes=sampler_weight_bytes)


def test_a_program_libtpu_refused_does_not_fit_whatever_the_hbm_figure():
    refused = ProgramStats(peak_bytes=60 * GIB, error="RESOURCE_EXHAUSTED: Used 60G of 50G hbm")
    report = _report({"sampler": ProgramStats(peak_bytes=GIB), "update": refused}, hbm=200 * GIB)
    assert report.per_chip_bytes <= report.hbm_bytes and report.fits is False


def test_the_inference_copy_runs_beside_the_training_parameters():
    programs = {"sampler": ProgramStats(peak_bytes=5 * GIB), "update": ProgramStats(peak_bytes=GIB)}
    inference = _report(programs, sampler_weight_bytes=3 * GIB).program_totals()["sampler"]
    train = _report(programs).program_totals()["sampler"]
    assert train == 5 * GIB + 20 * GIB + 10 * GIB  # optimizer and reference stay resident
    assert inference == train + 10 * GIB  # and the training parameters beside the sampler's own copy


def test_compiles_sampler_layout_is_judged_against_what_the_resident_state_leaves(tmp_path):
    path = _config_file(tmp_path)
    config = load_config(path)
    setup = make_setup(config, parse_topology("v5p:2x2x1"), config.sharding, workload_for(config, prompt_len=12))
    resident = sum(setup.resident().values())
    layout, note = sampler_layout(setup, resident + 1)  # one byte left beside the state: no room for a copy
    assert layout is None and note.startswith("sampler layout: train (the inference layout"), note
    layout, note = sampler_layout(setup, 95 * GIB)
    assert layout is not None and note.startswith("sampler layout: inference"), note


def test_a_sampler_on_devices_of_its_own_counts_its_chips_and_the_trainers_state_apart():
    programs = {"sampler": ProgramStats(peak_bytes=5 * GIB), "reference": ProgramStats(peak_bytes=2 * GIB),
                "update": ProgramStats(peak_bytes=GIB)}
    report = _report(programs)
    report.sampler_devices = 1  # v5p:2x2x1: 4 chips of one device each; the sampler takes one of them
    assert (report.chips("sampler"), report.chips("reference"), report.chips("update")) == (1, 3, 3)
    totals = report.program_totals()
    assert totals["sampler"] == 5 * GIB  # the trainer's state lives on the other chips
    # the reference pass holds the parameters, the optimizer and the copy that sampled the batch ahead
    assert totals["reference"] == 2 * GIB + 10 * GIB + 20 * GIB + 10 * GIB
    assert totals["update"] == GIB + 10 * GIB  # the update takes its state as arguments; the copy sits beside it
    assert report.per_chip_bytes == 42 * GIB


def test_a_peak_of_exactly_the_hbm_fits_and_one_byte_more_does_not():
    programs = {"sampler": ProgramStats(peak_bytes=GIB), "update": ProgramStats(peak_bytes=GIB)}
    peak = _report(programs).per_chip_bytes  # the sampler's peak beside the optimizer and reference
    assert peak == GIB + 30 * GIB
    assert _report(programs, hbm=peak).fits is True
    assert _report(programs, hbm=peak - 1).fits is False


def test_a_refused_program_has_no_activation_code_or_temporary_figure():
    refused = ProgramStats(peak_bytes=60 * GIB, error="RESOURCE_EXHAUSTED: Used 60G of 50G hbm")
    parts = _report({"sampler": refused, "update": refused}).breakdown()
    assert (parts["activations"], parts["code"], parts["sampler_temporaries"]) == (None, None, None)
    assert {k: parts[k] for k in RESIDENT} == RESIDENT  # the resident state is known without a compile


def test_the_decode_read_limit_counts_every_device_of_a_chip():
    """On v4 each chip is two devices, each holding its own rows' KV cache: a step reads the chip's share of the
    weights and both devices' caches (hand-computed: 4 chips, 8 devices)."""
    from r1jax.sharding.decode_stats import DecodeStats

    decode = DecodeStats(collective_bytes={}, weight_allgather_bytes=0, weight_allgathers=0, hbm_bytes=10 * GIB,
                         flops=1e9, loops=1)
    report = _report({"sampler": ProgramStats(peak_bytes=GIB, decode=decode), "update": ProgramStats(peak_bytes=GIB)})
    report.topology = parse_topology("v4:2x2x1")
    report.weight_read_bytes, report.decode_cache_read_bytes = 8 * GIB, GIB
    out = report.decode()
    assert out["hbm_read_limit_bytes"] == 8 * GIB // 4 + 2 * GIB
    assert out["hbm_bytes_per_token"] == 2 * 10 * GIB  # a device's traffic, times the chip's two devices


def test_a_v4_sampler_on_devices_of_its_own_counts_chips_not_devices():
    """v4:2x2x1 is 4 chips of 2 compile-only devices: a sampler on 4 devices has 2 chips, the trainer the other
    2; the update's model FLOPs are split over the trainer's 2 chips (hand-computed)."""
    from r1jax.rl.bench.flops import train_step_flops
    from r1jax.sharding.update_stats import StepStats
    from tests.model.tiny import QWEN

    step = StepStats({}, hbm_bytes=1, flops=1.0)
    report = _report({"sampler": ProgramStats(peak_bytes=GIB), "update": ProgramStats(peak_bytes=GIB, step=step)})
    report.topology, report.sampler_devices, report.model = parse_topology("v4:2x2x1"), 4, QWEN
    assert (report.chips("sampler"), report.chips("update")) == (2, 2)
    assert report.update()["model_flops_per_chip"] == train_step_flops(QWEN, 8, 24) / 2  # Workload(2, 4, 16, 8)
    report.topology, report.sampler_devices = parse_topology("v5p:2x2x1"), 1  # 3 trainer chips of 4
    assert report.update()["model_flops_per_chip"] == train_step_flops(QWEN, 8, 24) / 3


def test_the_report_names_the_peak_program_and_only_the_meshes_that_fit():
    programs = {"sampler": ProgramStats(peak_bytes=GIB), "update": ProgramStats(peak_bytes=40 * GIB)}
    report = _report(programs)
    report.alternatives = [{"mesh": "fsdp", "fits": True, "per_chip_bytes": GIB},
                           {"mesh": "ep8", "fits": False, "reason": "does not divide"}]
    out = report.to_dict()
    # the update's 40 GiB (it takes the state as arguments) over the sampler's 1 + 20 + 10 GiB
    assert out["peak_program"] == "update" and out["per_chip_bytes"] == 40 * GIB
    assert out["fitting_meshes"] == ["fsdp"]


def test_a_block_wise_read_takes_the_blocks_that_hold_the_mean_live_length_rounded_up():
    """Prompt 16 + half of 8 new tokens = 20 live slots on average: 3 blocks of 8 (the third partly live), not
    2; a cache read whole (no kv_block) is one trip."""
    from r1jax.rl.aot import dynamic_trips

    assert dynamic_trips(Workload(2, 4, 16, 8, kv_block=8)) == 3
    assert dynamic_trips(Workload(2, 4, 16, 8, kv_block=4)) == 5
    assert dynamic_trips(Workload(2, 4, 16, 8)) == 1
