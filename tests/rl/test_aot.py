"""`r1jax compile` (rl.aot) of a tiny GRPO step for a 4-chip v5p slice on this CPU host (libtpu)."""

import contextlib
import dataclasses
import io
import json
import re

import jax
import pytest
import yaml
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.factory import count_params
from r1jax.rl import aot
from r1jax.rl.aot import make_setup, sampler_layout, workload_for
from r1jax.rl.bench.flops import train_step_flops
from r1jax.rl.cli.compile import describe
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config
from r1jax.sharding.compile_stats import device_bytes
from r1jax.sharding.mesh_presets import MESH_PRESETS
from r1jax.sharding.topology import parse_topology
from tests.model.tiny import DEEPSEEK, QWEN

pytestmark = pytest.mark.usefixtures("optimized_xla_compile")  # compiles for TPU (tests/conftest.py)

GIB = 2**30
# one MoE layer: the programs' collectives, loops and memory are those of any depth (a scan over the layers),
# and libtpu compiles the update in 8 s instead of 12.6 s with a dense layer in front of it
MODEL = dataclasses.replace(DEEPSEEK, num_hidden_layers=1, first_k_dense_replace=0)


def _config_file(tmp_path):
    model = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(MODEL).items()}
    body = {"model": model,
            "sharding": {"data": 1, "fsdp": 2, "expert": 2, "tensor": 1, "preset": "fsdp_expert"},
            "grpo": {"prompts_per_step": 2, "group_size": 4, "kl_coef": 0.01},
            "sampling": {"max_new_tokens": 16, "prompt_buckets": [8, 16]}}
    path = tmp_path / "tiny_aot.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def _compile(*args) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["compile", *args, "--topology", "v5p:2x2x1", "--prompt-len", "12", "--json"])
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    return _config_file(tmp_path_factory.mktemp("aot"))


@pytest.fixture(scope="module")
def report(config_path):
    return _compile(config_path)


def test_tiny_grpo_step_fits_a_v5p_slice(report):
    code, r = report
    assert code == 0 and r["fits"] is True
    assert r["mesh_shape"] == {"data": 1, "fsdp": 2, "expert": 2, "tensor": 1}
    assert r["workload"] == {"prompts": 2, "group_size": 4, "prompt_len": 16, "new_tokens": 16, "micro_batches": 1,
                             "slots": 0, "kv_block": 0, "tail_slots": [], "cache_phases": 1, "rows": 8, "seq_len": 32}
    assert r["hbm_source"] == "compiler" and 90 * GIB < r["hbm_bytes"] < 100 * GIB  # v5p: 95 GiB per chip
    assert set(r["programs"]) == {"reshard", "sampler", "reference", "update"}  # reshard: into the sampler's layout
    for name, stats in r["programs"].items():
        assert stats["error"] is None and stats["peak_bytes"] > 0 and (name == "reshard" or stats["flops"] > 0)


def test_report_memory_is_consistent(report):
    _, r = report
    parts = r["breakdown"]
    params = count_params(MODEL)["params_total"] * 4  # float32, no array split more than 4 ways on 4 chips
    assert params / 4 <= parts["parameters"] < params / 2  # (the routing bias adds a few bytes)
    assert parts["reference"] == parts["parameters"]  # same shapes, same shardings
    assert parts["optimizer"] >= 2 * parts["parameters"] - 1024  # AdamW mu and nu (routing bias excluded)
    # the update's total is its parts: its arguments (the resident state and the batch, laid out in TPU tiles:
    # a tiny model's small arrays take more than their elements), what it holds beside them at its peak, and
    # its code
    update = r["programs"]["update"]
    assert update["argument_bytes"] >= parts["parameters"] + parts["optimizer"] + parts["reference"] + parts["batch"]
    assert r["program_totals"]["update"] == update["argument_bytes"] + parts["activations"] + parts["code"]
    assert parts["activations"] == update["peak_bytes"] - update["argument_bytes"] - update["code_bytes"] > 0
    assert parts["kv_cache"] > 0 and 0 < parts["sampler_temporaries"] < r["program_totals"]["sampler"]
    assert r["per_chip_bytes"] == max(r["program_totals"].values())
    assert r["per_chip_bytes"] > parts["parameters"] + parts["optimizer"] + parts["reference"]
    # the reshard takes the parameters and makes the sampler's copy, the optimizer and reference beside it
    reshard = r["programs"]["reshard"]
    assert reshard["argument_bytes"] >= parts["parameters"] and reshard["output_bytes"] >= r["sampler_weight_bytes"] > 0
    assert r["program_totals"]["reshard"] == reshard["peak_bytes"] + parts["optimizer"] + parts["reference"]
    assert reshard["peak_bytes"] >= reshard["argument_bytes"] + reshard["output_bytes"] - reshard["alias_bytes"]
    assert r["program_totals"][r["peak_program"]] == r["per_chip_bytes"]


def test_the_report_counts_memory_in_the_configs_dtypes(config_path, report):
    # the report's `dtypes` and resident `breakdown` are its setup's (rl.aot._report); the float32 report's
    # match its setup's here, and the bfloat16 setup (not compiled again: 45-56 s of TPU compiling) halves them
    def setup_of(*overrides):
        config = load_config(config_path, list(overrides))
        return make_setup(config, parse_topology("v5p:2x2x1"), config.sharding, workload_for(config))

    wide_setup, narrow_setup = setup_of(), setup_of("model.param_dtype=bfloat16", "optimizer.state_dtype=bfloat16")
    assert report[1]["dtypes"] == wide_setup.dtypes() == {"parameters": "float32", "optimizer_state": "float32",
                                                           "compute": "float32"}
    assert narrow_setup.dtypes() == {"parameters": "bfloat16", "optimizer_state": "bfloat16", "compute": "float32"}
    assert {k: report[1]["breakdown"][k] for k in wide_setup.resident()} == wide_setup.resident()
    bias = device_bytes(wide_setup.state.bias)  # DeepSeek's routing bias stays float32
    assert device_bytes(narrow_setup.state.bias) == bias

    def routers(setup):  # DeepSeek's router stays float32 too (model.moe.router_config), as transformers keeps it
        flat = jax.tree_util.tree_flatten_with_path(setup.state.params)[0]
        return [x for path, x in flat if "router" in jax.tree_util.keystr(path)]

    float32 = bias + device_bytes(routers(wide_setup))
    assert device_bytes(routers(narrow_setup)) == float32 - bias > 0
    wide, narrow = report[1]["breakdown"], narrow_setup.resident()
    assert narrow["parameters"] - float32 == (wide["parameters"] - float32) / 2  # bfloat16 halves the weights
    assert narrow["reference"] == narrow["parameters"]
    assert wide["optimizer"] - narrow["optimizer"] == wide["parameters"] - bias  # mu and nu: 8 -> 4 bytes


def test_tiny_hbm_does_not_fit_and_lists_the_other_meshes(config_path, report):
    code, r = _compile(config_path, "--hbm-gib", "0.0001")  # the same programs: compiled once per process
    assert code == 1 and r["fits"] is False and r["hbm_source"] == "override"
    assert r["per_chip_bytes"] == report[1]["per_chip_bytes"]
    assert {a["mesh"] for a in r["alternatives"]} == set(MESH_PRESETS)
    assert r["fitting_meshes"] == []
    by_name = {a["mesh"]: a for a in r["alternatives"]}
    assert "does not divide the 4 devices" in by_name["ep8"]["reason"]  # no 8-way expert axis on 4 chips
    assert by_name["fsdp"]["per_chip_bytes"] > 0.0001 * GIB  # judged from its resident state, not compiled


def test_text_report_names_the_verdict(config_path, report, capsys):
    assert main(["compile", config_path, "--topology", "v5p:2x2x1", "--prompt-len", "12"]) == 0  # cached
    text = capsys.readouterr().out
    assert "v5p:2x2x1, 4 chips" in text and "; HBM from compiler): fits" in text
    assert "dtypes: parameters float32, optimizer state float32, compute float32" in text
    assert "update step per chip: " in text and "MFU " in text


def test_v4_memory_is_said_per_device_not_per_chip(report):
    # libtpu's compile-only v4 devices are TensorCores, 2 per chip: the memory figures are a device's, and were
    # labelled "per chip" (15.25 GiB of a 32 GiB chip)
    report = report[1]  # (exit code, report)
    v4 = {**report, "topology": {**report["topology"], "devices_per_chip": 2, "topology": "v4:2x2x1"}}
    text = describe(v4)
    assert "\nper device: " in text and "HBM per device (" in text and "\nper chip: " not in text
    assert "2 devices per chip" in text and "update step per chip: " in text  # the steps are per chip
    assert "\nper chip: " in describe(report) and "HBM per chip (" in describe(report)


def test_bad_topology_and_mesh_are_clean_errors(config_path, capsys):
    assert main(["compile", config_path, "--topology", "v5p-7"]) == 2
    assert main(["compile", config_path, "--topology", "v5p-8", "--mesh", "nope"]) == 2
    err = capsys.readouterr().err
    assert "must be even" in err and "unknown mesh preset 'nope'" in err
    # past the model's context (4096): refused before anything compiles (it compiled for minutes)
    assert main(["compile", config_path, "--topology", "v5p-8", "--new-tokens", "5000"]) == 2
    assert ("--prompt-len, --new-tokens (or sampling.max_new_tokens): a prompt bucket of 16 tokens and 5000 new "
            "tokens pass the model's context of 4096 tokens") in capsys.readouterr().err


def test_a_batch_that_does_not_split_names_the_config_fields(config_path):
    config = load_config(config_path)
    work = workload_for(config, prompts=3, group_size=1)  # 3 rows over 4 data-parallel devices
    with pytest.raises(UserError, match=r"GRPO batch \(grpo.prompts_per_step x group_size\) of 3 rows does not "
                                        r"split over the 4 data-parallel devices"):
        make_setup(config, parse_topology("v5p:2x2x1"), config.sharding, work)


def test_the_report_has_the_decode_step_per_chip_and_token(config_path, report):
    _, r = report
    d = r["decode"]
    assert set(d["collective_bytes_per_token"]) == {"all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                                                    "collective-permute"}
    # the sampler's inference layout (4 heads over tensor=4) gathers no weight in the decode loop ...
    assert r["sampler_layout"].startswith("sampler layout: inference (data=1 fsdp=1 expert=1 tensor=4")
    assert r["sampler_weight_bytes"] > 0 and d["weight_allgather_bytes_per_token"] == 0
    # ... where the training layout (fsdp) gathers the layers' weights at every token
    code, train = _compile(config_path, "sampling.layout=train")
    assert code == 0 and train["sampler_layout"].startswith("sampler layout: train")
    assert train["sampler_weight_bytes"] == 0 and "reshard" not in train["programs"]
    assert 0 < train["decode"]["weight_allgather_bytes_per_token"] <= train["decode"][
        "collective_bytes_per_token"]["all-gather"]
    assert d["hbm_bytes_per_token"] > 0 and d["flops_per_token"] > 0
    assert d["est_step_s"] == pytest.approx(max(d["est_compute_s"], d["est_hbm_s"]) + d["est_collective_s"])
    assert d["est_tokens_per_s_per_chip"] == pytest.approx(r["workload"]["rows"] / d["est_step_s"] / 4)
    assert d["chip"]["hbm_bytes_per_s"] == 2765e9  # v5p
    # libtpu states no trip count: every loop of the decode step (the layer scan, the blocked kernels') is read
    assert d["assumed_trip_counts"] == 0 and d["assumed_trips"] == []



def test_the_report_estimates_the_update_step_per_chip(report):
    _, r = report
    u = r["update"]
    assert set(u["collective_bytes_per_chip"]) == {"all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                                                   "collective-permute"}
    assert u["collective_bytes_per_chip"]["all-gather"] > 0  # the fsdp mesh gathers the weights
    assert u["flops_per_chip"] > 0 and u["hbm_bytes_per_chip"] > 0
    # the model's own FLOPs (8 rows of 32 tokens, forward + backward), split over the 4 chips
    assert u["model_flops_per_chip"] == train_step_flops(MODEL, 8, 32) / 4
    peak = u["chip"]["peak_flops"]
    assert u["est_step_s"] == pytest.approx(max(u["est_compute_s"], u["est_hbm_s"]) + u["est_collective_s"])
    assert u["est_mfu"] == pytest.approx(u["model_flops_per_chip"] / (u["est_step_s"] * peak))
    assert u["est_mfu"] <= u["est_mfu_overlapped"] and 0 < u["est_mfu"] < 1
    assert u["assumed_trip_counts"] == 0 and u["assumed_trips"] == []  # every loop's trip count read


def _lowered_sampler(config_path, *overrides, program: str = "sampler", compiled: bool = False) -> str:
    """The sampler's (or with `program="update"` the update's) lowered program text as `r1jax compile` would
    compile it (not compiled here), or with `compiled` the compiled program's."""
    config = load_config(config_path, list(overrides))
    setup = make_setup(config, parse_topology("v5p:2x2x1"), config.sharding, workload_for(config, prompt_len=12))
    captured = []
    original = aot.compile_stats
    aot.compile_stats = lambda lowered, mesh, **_: captured.append(
        lowered.compile().as_text() if compiled else lowered.as_text())
    try:
        if program == "update":
            aot.compile_update(setup)
        else:
            aot.compile_sampler(setup, sampler_layout(setup, 95 * GIB)[0])
    finally:
        aot.compile_stats = original
    return captured[0]


def test_auto_kernels_on_tpu_are_blocked_for_the_update_and_ragged_for_decoding(config_path):
    """`moe_impl: auto` (the tiny config's): XLA compiles ragged_dot's weight gradient for TPU as a dense
    product over every local expert, so the update runs the blocked kernel; a decode step runs ragged_dot
    (one pass over each expert's weights per step), the sampler's prefill the blocked kernel."""
    assert "ragged_dot" not in _lowered_sampler(config_path, program="update")
    # the check sees ragged_dot where the update runs it
    assert "ragged_dot" in _lowered_sampler(config_path, "model.moe_impl=ragged", program="update")
    assert "chlo.ragged_dot" in _lowered_sampler(config_path)
    assert "ragged_dot" not in _lowered_sampler(config_path, "model.moe_decode_impl=blocked")


def test_a_decode_step_sums_each_layers_output_in_one_all_reduce_and_gathers_no_token(config_path):
    """In the compiled decode loop each [rows, D] hidden state crosses the interconnect once per sum: the
    embedding's lookup (vocabulary split), attention's output projection, and the MoE layer's routed experts
    with its shared expert's partial output added in (the positions holding no token are zeroed before that
    sum: a select after it kept the two apart, two all-reduces and an all-gather of the tokens, 2026-12-04)."""
    hidden = []  # the [.., D] arrays each all-reduce or all-gather in the decode loop's body moves
    for line in _lowered_sampler(config_path, compiled=True).splitlines():
        op = re.search(r" (all-reduce|all-gather)(?:-start)?\(", line)
        if op and "/decode/while/body/" in line:
            result = line.split("=", 1)[1].split(op.group(0))[0]
            shapes = re.findall(r"\w+\[([\d,]*)\]", result)
            hidden += [op.group(1) for dims in shapes if dims.split(",")[-1] == str(MODEL.hidden_size)]
    assert sorted(hidden) == ["all-reduce"] * (1 + 2 * MODEL.num_hidden_layers)


def test_the_sampler_compiles_as_the_config_runs_it(config_path):
    fixed = _lowered_sampler(config_path)
    continuous = _lowered_sampler(config_path, "sampling.slots=4")
    blocked = _lowered_sampler(config_path, "sampling.slots=4", "sampling.kv_block=8")
    tail = _lowered_sampler(config_path, "sampling.slots=4", "sampling.tail_slots=[2]")
    assert "jit_generate_padded" in fixed and "jit_generate_continuous" not in fixed
    assert "jit_generate_continuous" in continuous
    # the block-wise cache read is a loop of its own in every attention layer
    assert blocked.count("stablehlo.while") > continuous.count("stablehlo.while")
    # the tail's 2 slots: one more decode loop, over 2 rows (a TPU decode step's ragged MoE holds no loop)
    assert tail.count("stablehlo.while") == continuous.count("stablehlo.while") + 1


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_the_tpu_sampler_compiles_each_layers_weights_as_a_buffer_of_its_own(config_path, family):
    """On TPU a kernel (the experts' ragged dot) takes whole buffers: a layer's slice of stacked weights would be
    copied at every decode step, so both families' compiled sampler weights hold no axis of stacked layers."""
    model = {"qwen3_moe": QWEN, "deepseek_v3": DEEPSEEK}[family]  # (a dense layer, then MoE layers)
    config = dataclasses.replace(load_config(config_path), model=model)
    setup = make_setup(config, parse_topology("v5p:2x2x1"), config.sharding, workload_for(config, prompt_len=12))
    layout, _ = sampler_layout(setup, 95 * GIB)
    weights = layout.abstract((setup.state.params, setup.state.bias))
    axes = [v.get_metadata()["axes"] for v in jax.tree.leaves(weights, is_leaf=lambda x: isinstance(x, nnx.Variable))]
    stacked = any("layers" in a for a in axes)
    assert axes and layout.per_layer and not stacked
    assert device_bytes(weights) == device_bytes(layout.abstract(weights))  # resharding it again: the same


def test_continuous_batching_reports_the_slots_and_their_cache(config_path):
    code, r = _compile(config_path, "sampling.slots=4", "sampling.kv_block=4")
    assert code == 0 and r["workload"]["slots"] == 4 and r["workload"]["kv_block"] == 4
    d = r["decode"]
    assert d["est_tokens_per_s_per_chip"] == pytest.approx(4 / d["est_step_s"] / 4)  # 4 slots, 4 chips
    assert "one token for each of 4 rows" in describe(r)  # a step's rows are the slots (it said the batch's 8)
    # the slots' caches (32 long) and the prompts' (16 long), MLA's latent + rope key, float32, 2 layers;
    # rows are not split: the inference layout's batch axes have one device
    entry = (MODEL.kv_lora_rank + MODEL.qk_rope_head_dim) * 4
    assert r["breakdown"]["kv_cache"] == MODEL.num_hidden_layers * (4 * 32 + 2 * 16) * entry
    # a decode step reads the slots' caches up to the mean live length, 16 + 16 // 2 = 24 (6 blocks of 4),
    # and a quarter of the weights (float32, the one MoE layer's routing bias included; not the untied
    # embedding table, of which a step gathers a row per token)
    embedding = 0 if MODEL.tie_word_embeddings else MODEL.vocab_size * MODEL.hidden_size
    weights = (count_params(MODEL)["params_total"] + MODEL.n_routed_experts - embedding) * 4
    assert d["hbm_read_limit_bytes"] == weights // 4 + MODEL.num_hidden_layers * 4 * 24 * entry


def test_the_prompts_prefilled_caches_count_whole_on_every_device_under_continuous_batching(config_path):
    # the slots' caches split over the batch devices; the prompts' prefilled caches sit whole on each
    # (rl.continuous: any slot admits any prompt): counted split, the breakdown showed a quarter of them
    config = load_config(config_path, ["sampling.slots=4", "sampling.layout=train",  # batch over 4 devices
                                       "grpo.prompts_per_step=4"])
    setup = make_setup(config, parse_topology("v5p:2x2x1"), config.sharding, workload_for(config, prompt_len=16))
    layout = sampler_layout(setup, 95 * GIB)[0]
    entry = (MODEL.kv_lora_rank + MODEL.qk_rope_head_dim) * 4  # MLA's latent + rope key, float32
    # 4 slots of 16 + 16 positions, one per device; the 4 prompts of 16 positions, all on every device
    assert aot.kv_cache_bytes(setup, layout) == MODEL.num_hidden_layers * (1 * 32 + 4 * 16) * entry


def _sampler_decode(config_path, *overrides, new_tokens: int):
    """The compiled sampler's decode step and the cache bytes a step reads (the HBM-read limit's)."""
    config = load_config(config_path, list(overrides))
    setup = make_setup(config, parse_topology("v5p:2x2x1"), config.sharding,
                       workload_for(config, prompt_len=12, new_tokens=new_tokens))
    layout = sampler_layout(setup, 95 * GIB)[0]
    return aot.compile_sampler(setup, layout).decode, aot.kv_cache_bytes(setup, layout, read=True)


def test_decode_phases_are_read_by_their_share_of_the_steps(config_path, report):
    """`sampling.cache_phases: 2` over 16 new tokens: two decode loops over caches of 16 + 8 and 16 + 16 slots,
    each half the steps; a step reads the mean, 16 + 12 = 28 slots of each row's cache, where the one loop
    reads all 32 at every step. (The one loop's sampler is the report's, compiled once per process:
    sharding.compile_stats; the config's 16 new tokens are the fewest that make two phases of 8.)"""
    one, one_read = _sampler_decode(config_path, new_tokens=16)
    phased, phased_read = _sampler_decode(config_path, "sampling.cache_phases=2", new_tokens=16)
    entry = (MODEL.kv_lora_rank + MODEL.qk_rope_head_dim) * 4  # MLA's latent + rope key, float32
    assert one_read == MODEL.num_hidden_layers * 8 * 32 * entry  # 8 rows, not split (inference layout)
    assert phased_read == MODEL.num_hidden_layers * 8 * 28 * entry
    assert (one.loops, phased.loops) == (1, 2)
    assert phased.flops == one.flops  # the same products per step (attention's are not dots here)
    assert phased.hbm_bytes < one.hbm_bytes


def test_a_sampler_on_devices_of_its_own_compiles_there_and_leaves_the_trainer_the_rest(config_path, report, capsys):
    """`sampling.devices: 4` on 8 chips in 2 hosts: each host gives the sampler 2 chips (as a run splits them),
    the config's 4-device mesh holds the trainer's state on the other 4, and the sampler's chips hold no
    trainer state."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["compile", config_path, "sampling.devices=4", "grpo.max_staleness=1", "grpo.kl_coef=0",
                     "--topology", "v5p:2x2x2", "--prompt-len", "12", "--json"])
    r = json.loads(out.getvalue())
    assert code == 0 and r["fits"] is True
    assert (r["sampler_devices"], r["trainer_chips"], r["sampler_chips"]) == (4, 4, 4)
    assert r["mesh_shape"] == report[1]["mesh_shape"]  # the trainer's mesh: the config's, over 4 devices
    assert "on devices of its own: [2-3, 6-7] (the trainer's: [0-1, 4-5])" in r["sampler_layout"]
    assert r["sampler_layout"].startswith("sampler layout: inference")
    # the trainer's chips hold what the shared 4-chip slice's do; the sampler's, its program alone
    for part in ("parameters", "optimizer"):  # (no reference: kl_coef 0 spares its compile)
        assert r["breakdown"][part] == report[1]["breakdown"][part]
    assert set(r["programs"]) == {"sampler", "update"}
    assert r["program_totals"]["sampler"] == r["programs"]["sampler"]["peak_bytes"]
    # the trainer's chips keep the weights that sampled the batch ahead while the update runs
    assert r["program_totals"]["update"] == r["programs"]["update"]["peak_bytes"] + r["breakdown"]["parameters"]
    text = describe(r)
    assert "; the trainer on 4 chips, the sampler on 4 of its own" in text
    assert "per sampler chip: kv_cache " in text and "per trainer chip: parameters " in text
    assert re.search(r"sampler +[0-9.]+ GiB alone on its chips", text)
    # per-chip figures over each program's own chips
    assert r["update"]["model_flops_per_chip"] == pytest.approx(train_step_flops(MODEL, 8, 32) / 4)
    d = r["decode"]
    assert d["est_tokens_per_s_per_chip"] == pytest.approx(8 / d["est_step_s"] / 4)
    # a share the hosts cannot split evenly is the run's own error, naming the counts that fit
    assert main(["compile", config_path, "sampling.devices=3", "grpo.max_staleness=1", "--topology", "v5p:2x2x2"]) == 2
    assert "under 2 processes of 4 devices each" in capsys.readouterr().err
    # v4's compile-only devices are 2 per chip: the sampler gets whole chips
    assert main(["compile", config_path, "sampling.devices=2", "grpo.max_staleness=1", "--topology", "v4-16"]) == 2
    assert ("a v4 chip holds 2 compile-only devices (TensorCores), and each of the 2 hosts gives the sampler 1; "
            "give it whole chips (a multiple of 4)") in capsys.readouterr().err
