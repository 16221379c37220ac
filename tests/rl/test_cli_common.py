"""What every `r1jax` command shares (rl/cli/main.py, rl/cli/common.py) and `r1jax info`: out-of-memory and a closed
output pipe as one line, the lowest value each integer flag takes, prompt buckets, the write check leaving
nothing, config bounds named as the flag that set them, `info`'s architecture fields (found by a mutation review:
each case let a mutation of the code through before)."""

import argparse
import json

import pytest

from r1jax.errors import out_of_memory
from r1jax.rl.cli import common
from r1jax.rl.cli.main import build_parser, main, parse_arguments


def refused(capsys, *argv):
    """The command's one error line (exit code 2, no traceback)."""
    assert main(list(argv), as_program=False) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"r1jax {argv[0]}: error: " in err, err
    return err


# --- main.py: out_of_memory -------------------------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    "RESOURCE_EXHAUSTED: Attempting to reserve 12.00G at the bottom of memory. That was not possible.",  # TPU's
    "Out of memory while trying to allocate 4294967296 bytes.",  # XLA's GPU allocator, no status prefix
])
def test_either_of_xlas_out_of_memory_phrasings_is_one_line_exit_2(capsys, monkeypatch, message):
    """Either phrase alone marks XLA's allocation failure (a mutation requiring both let these through as bugs)."""
    import jax

    from r1jax.rl.cli import info

    def allocate(args):
        raise jax.errors.JaxRuntimeError(message)

    monkeypatch.setattr(info, "run", allocate)
    err = refused(capsys, "info", "tiny")
    assert f"r1jax info: error: out of memory: {message}; ask for fewer rows or tokens at once" in err, err


def test_out_of_memory_is_only_xlas_runtime_error():
    import jax

    assert out_of_memory(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x"))
    assert out_of_memory(jax.errors.JaxRuntimeError("Out of memory allocating 8 bytes"))
    assert not out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: something else"))
    assert not out_of_memory(ValueError("RESOURCE_EXHAUSTED: Out of memory"))  # not XLA's: a bug, re-raised


# --- main.py: a full or read-only disk ------------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device", "/run/metrics.jsonl"),
    ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/run/checkpoints/4.orbax-'
               'checkpoint-tmp/": Failed writing: "/run/metrics.jsonl": Failed to write 36295 bytes to file 22: No '
               "space left on device [os_error_code='28']"),  # tensorstore's, from an Orbax checkpoint save
])
def test_a_full_disk_is_one_line_naming_the_file_exit_2(capsys, monkeypatch, error):
    """A checkpoint save or a metrics row the disk refuses printed a traceback (exit 1); now one line naming the
    file and how to go on (the run keeps its last whole checkpoint and resumes from it)."""
    from r1jax.rl.cli import info

    def write(args):
        raise error

    monkeypatch.setattr(info, "run", write)
    err = refused(capsys, "info", "tiny")
    assert "r1jax info: error: no space left on device: /run/metrics.jsonl; free space, then run again" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("code,remedy", [
    (30, "read-only file system: /run/m; make it writable, then"),
    (27, "file too large: /run/m; write where no file-size limit stops it (the file system's, or the shell's "
         "`ulimit -f`), then"),
    (122, "disk quota exceeded: /run/m; free space or raise the quota, then"),
])
def test_each_refusal_names_its_own_remedy(capsys, monkeypatch, code, remedy):
    """Every refusal read "free space or make it writable": no help for a file-size limit (EFBIG), half wrong
    for the others."""
    from r1jax.rl.cli import info

    def write(args):
        raise OSError(code, "refused", "/run/m")

    monkeypatch.setattr(info, "run", write)
    assert f"r1jax info: error: {remedy} run again" in refused(capsys, "info", "tiny")


def test_a_background_writers_full_disk_is_one_line_once(capsys):
    """TensorBoard's event thread and its flush at exit printed a traceback each when the disk filled."""
    import sys
    import threading

    from r1jax.rl.cli.main import report_background_storage_failures

    hooks = threading.excepthook, sys.unraisablehook
    try:
        report_background_storage_failures("train")
        for _ in range(2):
            thread = threading.Thread(target=lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))
            thread.start()
            thread.join()
        err = capsys.readouterr().err
        assert err == "r1jax train: error: no space left on device (in a background writer)\n", err
    finally:
        threading.excepthook, sys.unraisablehook = hooks


# --- common.py: the integer types' lower bounds are inclusive ----------------------------------------------------

def test_the_lowest_value_each_integer_type_allows_is_taken():
    assert common.positive_int("1") == 1 and common.non_negative_int("0") == 0
    assert common.max_new_tokens("1") == 1 and common.cpu_device_count("1") == 1
    assert common.pool_workers("1") == 1 and common.pool_memory_mb("0") == 0
    for parse, low in ((common.positive_int, 0), (common.non_negative_int, -1), (common.max_new_tokens, 0)):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected an integer >= {low + 1}, got {low}"):
            parse(str(low))
    args = parse_arguments(build_parser(), ["--cpu-devices", "1", "generate", "CK", "--ids", "1", "--samples", "1",
                                            "--max-new-tokens", "1", "--top-k", "0"])
    assert (args.cpu_devices, args.samples, args.max_new_tokens, args.top_k) == (1, 1, 1, 0)


# --- common.py: buckets_for, check_creatable, flags_in_error -----------------------------------------------------

@pytest.mark.parametrize("buckets, longest, expected", [
    ((64,), 64, (64,)),            # fits the largest: unchanged
    ((64,), 65, (64, 128)),        # one more bucket, rounded up to a multiple of 64
    ((64,), 128, (64, 128)),       # already a multiple of 64: that multiple, not the next one
    ((32, 64), 192, (32, 64, 192)),
    ((64, 128), 100, (64, 128)),   # below the largest (not the smallest): unchanged
])
def test_buckets_for_adds_the_longest_prompt_rounded_up_to_64(buckets, longest, expected):
    assert common.buckets_for(buckets, longest) == expected


def test_the_write_check_leaves_nothing_behind(tmp_path):
    """check_creatable tries a scratch directory and removes it: a refused command leaves no trace."""
    (tmp_path / "empty").mkdir()
    common.check_creatable(tmp_path / "a" / "b", "x")  # tried in tmp_path, its nearest existing parent
    common.check_creatable(tmp_path / "empty", "x")
    assert common.new_output_dir(tmp_path / "new") == tmp_path / "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_dangling_symlink_as_output_directory_is_refused_naming_its_target(tmp_path):
    """export-hf wrote the whole export, then its rename onto the link failed: NotADirectoryError's traceback."""
    from r1jax.errors import UserError

    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=r"output directory '.*link' is a symlink to '.*gone', which does not exist"):
        common.new_output_dir(tmp_path / "link")
    (tmp_path / "gone").mkdir()  # the directory it names, made: an empty one, taken
    assert common.new_output_dir(tmp_path / "link") == tmp_path / "link"


def test_a_symlink_chain_to_nothing_names_each_hop_and_a_loop_is_said(tmp_path):
    """A link to a link to nothing named only the first hop (a link that exists), not the path that is missing."""
    from r1jax.errors import UserError

    (tmp_path / "b").symlink_to(tmp_path / "gone")
    (tmp_path / "a").symlink_to("b")
    with pytest.raises(UserError, match=r"output directory '.*/a' is a symlink to 'b' -> '.*/gone', which does "
                                        r"not exist; give a new or empty directory"):
        common.new_output_dir(tmp_path / "a")
    (tmp_path / "c").symlink_to("d")
    (tmp_path / "d").symlink_to("c")
    with pytest.raises(UserError, match=r"'.*/c' is a symlink to 'd' -> 'c' -> 'd' -> 'c' -> \.\.\., a symlink loop"):
        common.new_output_dir(tmp_path / "c")


def test_a_long_symlink_chain_names_the_missing_path_and_a_too_long_one_is_no_loop(tmp_path):
    """A chain of more than 4 hops showed its first 4 only: the missing path, the one to make, went unnamed; a
    chain of more than 40 links (the kernel follows 40) was called a loop."""
    from r1jax.errors import UserError

    for i in range(1, 46):  # l1 -> gone, l2 -> l1, ..., l45 -> l44
        (tmp_path / f"l{i}").symlink_to("gone" if i == 1 else f"l{i - 1}")
    with pytest.raises(UserError, match=r"'.*/l6' is a symlink to 'l5' -> 'l4' -> 'l3' -> \.\.\. -> 'gone', which "
                                        r"does not exist"):
        common.new_output_dir(tmp_path / "l6")
    with pytest.raises(UserError, match=r"'.*/l45' is a symlink to 'l44' -> 'l43' -> 'l42' -> 'l41' -> \.\.\., "
                                        r"more than 40 links, which no path follows"):
        common.new_output_dir(tmp_path / "l45")


def test_a_config_bound_is_named_as_the_flag_that_set_it():
    from r1jax.errors import UserError

    flags = {"top_k": ("--top-k", 5), "top_p": ("--top-p", 0.5)}
    err = UserError("sampling.top_k=5: must be at most model.vocab_size=4 (0: no top-k filter)")
    named = common.flags_in_error(err, "sampling", flags)
    assert str(named) == "--top-k 5: sampling.top_k=5: must be at most model.vocab_size=4 (0: no top-k filter)"
    other = UserError("sampling.max_new_tokens=9: too long")  # a field no flag set: the error itself
    assert common.flags_in_error(other, "sampling", flags) is other
    prefixed = UserError("eval.sampling.top_k=5: bad")  # another section's field of that name: not the flag's
    assert common.flags_in_error(prefixed, "sampling", flags) is prefixed


# --- info.py: every field of the report, and overrides without a config name ------------------------------------

def info(capsys, *argv):
    assert main(["info", *argv], as_program=False) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("preset, expected", [
    # DeepSeek-V3's published architecture: 61 layers, the first 3 dense; 256 routed experts, 8 per token
    ("deepseek_v3_671b", dict(family="deepseek_v3", num_hidden_layers=61, layer_segments=[["dense", 3], ["moe", 58]],
                              n_routed_experts=256, num_experts_per_tok=8, vocab_size=129280, hidden_size=7168)),
    # Qwen3-30B-A3B's: 48 MoE layers, 128 experts, 8 per token
    ("qwen3_30b_a3b", dict(family="qwen3_moe", num_hidden_layers=48, layer_segments=[["moe", 48]],
                           n_routed_experts=128, num_experts_per_tok=8, vocab_size=151936, hidden_size=2048)),
])
def test_info_reports_each_architecture_field_of_the_preset(capsys, preset, expected):
    report = info(capsys, preset)
    assert {k: report[k] for k in expected} == expected
    assert set(report) == {*expected, "params_total", "params_active"}


def test_info_with_overrides_alone_reads_the_default_config(capsys):
    """`r1jax info model.x=1` is the tiny preset with that override (common.split_config_and_overrides)."""
    report = info(capsys, "model.num_hidden_layers=3", "model.n_routed_experts=4")
    assert (report["family"], report["num_hidden_layers"], report["n_routed_experts"], report["vocab_size"]) == (
        "deepseek_v3", 3, 4, 512)  # configs/tiny.yaml: a deepseek_v3 of vocabulary 512, first layer dense
    assert report["layer_segments"] == [["dense", 1], ["moe", 2]]


# --- main.py: a reader that went away ------------------------------------------------------------------------------

def test_a_closed_output_pipe_exits_1_without_a_traceback():
    """`r1jax info | head`: the repository's test pipes into `true`, whose status the shell reports; here r1jax's
    own exit status: 1 (the output was not all written), and nothing on stderr."""
    import subprocess
    import sys

    from tests.rl.conftest import subprocess_env

    program = ("import sys\n"
               "from r1jax.rl.cli import info\n"
               "from r1jax.rl.cli.main import main\n"
               "def run(args):\n"
               "    raise BrokenPipeError(32, 'Broken pipe')\n"
               "info.run = run\n"
               "sys.exit(main(['info', 'tiny']))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=subprocess_env(),
                            timeout=120)
    assert result.returncode == 1 and result.stderr == "", result.stderr


# --- main.py: what a mutation review of round 19 let through --------------------------------------------------------

def test_cpu_devices_replaces_only_the_device_count_in_the_users_xla_flags(monkeypatch):
    """--cpu-devices keeps the user's other XLA flags (a dump directory) and leaves one device count, its own."""
    import os
    import sys

    from r1jax.rl.cli.main import fake_cpu_devices

    monkeypatch.delitem(sys.modules, "jax")  # as before JAX starts: only the environment is set
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/d --xla_force_host_platform_device_count=8 --xla_x=1")
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    fake_cpu_devices(3)
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/d --xla_x=1 --xla_force_host_platform_device_count=3"
    assert os.environ["JAX_PLATFORMS"] == "cpu"


def test_only_the_program_itself_tunes_the_process(monkeypatch):
    """main(None) (the console script: argv from the command line) installs the process-wide settings; a caller's
    main([...]) (a test, a notebook) does not, unless it says as_program=True."""
    from r1jax.rl.cli import info, main as main_module

    calls = []
    monkeypatch.setattr(info, "run", lambda args: 0)
    monkeypatch.setattr(main_module, "collect_garbage_less_often", lambda: calls.append("gc"))
    monkeypatch.setattr(main_module, "report_background_storage_failures", lambda command: calls.append(command))
    monkeypatch.setattr(main_module, "retain_freed_memory", lambda: calls.append("malloc"))
    monkeypatch.setattr("sys.argv", ["r1jax", "info", "tiny"])
    assert main(["info", "tiny"]) == 0 and calls == []
    assert main() == 0 and calls == ["malloc", "gc", "info"]  # (JAX_PLATFORMS=cpu in the tests)


@pytest.mark.parametrize("command, resume", [("train", True), ("export-hf", False)])
def test_only_train_is_told_that_a_run_dir_resumes_after_a_full_disk(command, resume):
    from r1jax.rl.cli.main import not_a_bug

    said = not_a_bug(OSError(28, "No space left on device", "/run/m"), command)
    assert said == ("no space left on device: /run/m; free space, then run again"
                    + (" (`r1jax train --run-dir DIR` resumes from the last checkpoint)" if resume else ""))


def test_an_out_of_memory_error_is_said_by_its_first_line_only():
    import jax

    from r1jax.rl.cli.main import not_a_bug

    said = not_a_bug(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: 12G\nbuffer dump\nmore"), "eval")
    assert said == "out of memory: RESOURCE_EXHAUSTED: 12G; ask for fewer rows or tokens at once"


def test_a_background_thread_error_that_is_no_full_disk_keeps_its_traceback(capsys):
    import sys
    import threading

    from r1jax.rl.cli.main import report_background_storage_failures

    hooks, seen = (threading.excepthook, sys.unraisablehook), []
    try:
        threading.excepthook = lambda args: seen.append(type(args.exc_value).__name__)
        report_background_storage_failures("train")
        thread = threading.Thread(target=lambda: (_ for _ in ()).throw(ValueError("a bug")))
        thread.start()
        thread.join()
    finally:
        threading.excepthook, sys.unraisablehook = hooks
    assert seen == ["ValueError"] and capsys.readouterr().err == ""


def test_the_users_jax_platforms_wins_over_the_cpu_pin(monkeypatch):
    """On a host with no accelerator the CPU is pinned, unless the user's JAX_PLATFORMS says otherwise."""
    import os

    from r1jax.rl.cli.main import pin_cpu_without_accelerators
    from r1jax.sharding import jax_private

    monkeypatch.setattr(jax_private, "accelerators_visible", lambda: False)
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    pin_cpu_without_accelerators()
    assert os.environ["JAX_PLATFORMS"] == "tpu"
    monkeypatch.delenv("JAX_PLATFORMS")
    pin_cpu_without_accelerators()
    assert os.environ["JAX_PLATFORMS"] == "cpu"
