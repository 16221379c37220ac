"""rl.host_info: a CPU's widest vector instructions from its cpuinfo flags (x86 and Arm, hand-written cases),
and the cpuinfo parser on written files."""

import pytest

from r1jax.rl.host_info import cpu_model_and_flags, vector_isa

X86_AVX2 = "fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"  # this development machine's kind


@pytest.mark.parametrize("flags,expected", [
    (X86_AVX2, "avx2"),
    (X86_AVX2 + " avx512f avx512dq avx512bw avx512vl", "avx512f"),
    (X86_AVX2 + " avx512f avx512_bf16 amx_tile amx_bf16", "amx_bf16"),
    ("fpu sse sse2 sse4_1 sse4_2", "sse4_2"),
    ("fp asimd evtstrm aes sve sve2", "sve2"),
    ("fp asimd evtstrm", "asimd"),
    ("", None),
])
def test_the_widest_vector_instructions_are_named(flags, expected):
    assert vector_isa(flags.split()) == expected


def test_cpuinfo_gives_the_first_cpus_model_and_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2\n\n"
                   "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert cpu_model_and_flags(str(x86)) == ("AMD EPYC", ("fpu", "avx", "avx2"))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n")
    model, flags = cpu_model_and_flags(str(arm))
    assert model is None and vector_isa(flags) == "sve"


def test_a_host_without_cpuinfo_has_no_flags(tmp_path):
    assert cpu_model_and_flags(str(tmp_path / "missing"))[1] == ()
