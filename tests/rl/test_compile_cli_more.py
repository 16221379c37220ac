"""`r1jax compile`'s command (rl/cli/compile.py) without libtpu: rl.aot's compile replaced by a stand-in that records
what it was asked, so what the flags reach, the exit code, the alternatives and the text report are checked on
any host (tests/rl/test_aot.py compiles for real where libtpu is installed). Found by a mutation review (round 19):
each case let a mutation of the code through."""

import json

import pytest

from r1jax.rl import aot
from r1jax.rl.cli.compile import describe
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config

GIB = 2**30


class Report:
    def __init__(self, fits):
        self.fits, self.alternatives = fits, None

    def to_dict(self):
        return {"fits": self.fits, "alternatives": self.alternatives}


@pytest.fixture
def compiled(monkeypatch):
    """What compile_report and alternatives were called with; `fits` says the stand-in's verdict."""
    seen = {"fits": True, "report": [], "alternatives": []}

    def compile_report(config, topology, mesh, work, hbm):
        seen["report"].append((config, topology.kind, mesh, work, hbm))
        return Report(seen["fits"])

    def alternatives(config, topology, work, hbm, skip):
        seen["alternatives"].append((mesh_of(config), hbm, skip))
        return [{"mesh": "fsdp", "fits": True}]

    def mesh_of(config):
        return config.sharding

    monkeypatch.setattr(aot, "compile_report", compile_report)
    monkeypatch.setattr(aot, "alternatives", alternatives)
    return seen


def test_flags_and_overrides_reach_the_compile_and_a_fit_exits_0(compiled, capsys):
    assert main(["compile", "tiny", "--topology", "v4-16", "--json", "--hbm-gib", "3", "--prompt-len", "40",
                 "--new-tokens", "24", "--micro-batches", "2", "seed=4"], as_program=False) == 0
    ((config, kind, mesh, work, hbm),) = compiled["report"]
    assert config == load_config("tiny", ["seed=4"]) and (kind, mesh) == ("v4", "config")
    assert (work.new_tokens, work.micro_batches) == (24, 2) and work.prompt_len >= 40
    assert hbm == (3 * GIB // 2, "override")  # per chip, a v4 chip's 2 devices sharing it
    assert compiled["alternatives"] == []  # it fits: no other mesh tried
    assert json.loads(capsys.readouterr().out) == {"fits": True, "alternatives": None}


def test_a_misfit_exits_1_listing_the_other_meshes_unless_told_not_to(compiled, capsys):
    compiled["fits"] = False
    assert main(["compile", "tiny", "--topology", "v5p-8", "--json", "--hbm-gib", "1", "--mesh", "fsdp"],
                as_program=False) == 1
    assert compiled["alternatives"] == [(load_config("tiny").sharding, (GIB, "override"), "fsdp")]
    assert json.loads(capsys.readouterr().out)["alternatives"] == [{"mesh": "fsdp", "fits": True}]
    assert main(["compile", "tiny", "--topology", "v5p-8", "--json", "--hbm-gib", "1", "--no-alternatives"],
                as_program=False) == 1
    assert len(compiled["alternatives"]) == 1 and json.loads(capsys.readouterr().out)["alternatives"] is None


def report(**changes):
    """A hand-made report of a 4-chip v4 slice (2 devices per chip) whose sampler shares the trainer's chips."""
    r = {
        "topology": {"name": "v4-8", "topology": "v4:2x2x1", "chips": 4, "devices": 8, "devices_per_chip": 2},
        "mesh": "config", "mesh_shape": {"data": 1, "fsdp": 8}, "rules_preset": "fsdp_expert_tensor",
        "rules_overrides": None,
        "workload": {"prompts": 4, "group_size": 2, "rows": 8, "prompt_len": 64, "new_tokens": 32,
                     "micro_batches": 1, "cache_phases": 1, "slots": 0},
        "dtypes": {"param_dtype": "float32"}, "sampler_devices": 0,
        "breakdown": {"parameters": GIB, "kv_cache": GIB // 2},
        "programs": {"sampler": {"flops": 2.5e9, "error": None, "compile_seconds": 3.4}},
        "program_totals": {"sampler": 3 * GIB}, "sampler_layout": "sampler on the trainer's mesh",
        "sampler_weight_bytes": 0, "decode": None, "update": None, "fits": False, "per_chip_bytes": 3 * GIB,
        "hbm_bytes": 2 * GIB, "peak_program": "sampler", "hbm_source": "override",
        "alternatives": [{"mesh": "fsdp", "fits": False, "per_chip_bytes": 5 * GIB},
                         {"mesh": "expert", "fits": False, "reason": "8 experts do not split"}],
        "fitting_meshes": [],
    }
    return {**r, **changes}


def test_the_text_report_says_each_figure_where_it_belongs():
    lines = describe(report()).splitlines()
    assert lines == [
        "v4-8 (v4:2x2x1, 4 chips, 8 devices), mesh config (data=1 fsdp=8; rules fsdp_expert_tensor)",
        "workload: 4 prompts x 2 = 8 rows of 64 + 32 tokens, 1 micro-batch(es)",
        "dtypes: param dtype float32",
        "memory per device: 2 devices per chip (libtpu's compile-only v4 devices are TensorCores); steps per chip",
        "per device: parameters 1.00 GiB, kv_cache 0.50 GiB",
        "  sampler   3.00 GiB with resident state (compiled in 3 s, 2.5e+09 flops)",
        "sampler on the trainer's mesh",
        "peak 3.00 GiB of 2.00 GiB HBM per device (sampler; HBM from override): DOES NOT FIT",
        "  mesh fsdp: no 5.00 GiB",
        "  mesh expert: no  (8 experts do not split)",
        "meshes that fit: none",
    ]


def test_the_text_report_of_a_v5p_fit_with_a_sampler_of_its_own():
    r = report(topology={"name": "v5p-8", "topology": "v5p:2x2x1", "chips": 4, "devices": 4, "devices_per_chip": 1},
               rules_overrides={"x": ["fsdp"]}, sampler_devices=1, trainer_chips=3, sampler_chips=1,
               workload={**report()["workload"], "cache_phases": 2}, fits=True, alternatives=None,
               sampler_weight_bytes=GIB // 4,
               breakdown={"parameters": GIB, "kv_cache": GIB // 2, "sampler_temporaries": None},
               programs={"sampler": {"flops": 0, "error": "too big", "compile_seconds": 0.4}})
    lines = describe(r).splitlines()
    assert lines[0].endswith("(data=1 fsdp=8; rules fsdp_expert_tensor + overrides); the trainer on 3 chips, the "
                             "sampler on 1 of its own")
    assert lines[1].endswith("1 micro-batch(es), decoded in 2 cache phases")
    assert lines[3:] == [
        "per trainer chip: parameters 1.00 GiB",
        "per sampler chip: kv_cache 0.50 GiB, sampler_temporaries unknown",
        "  sampler   3.00 GiB alone on its chips (compiled in 0 s)  REFUSED: too big",
        "sampler on the trainer's mesh, a weight copy of 0.25 GiB per chip",
        "peak 3.00 GiB of 2.00 GiB HBM per chip (sampler; HBM from override): fits",
    ]
