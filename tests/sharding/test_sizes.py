"""parse_size: KB/MB/GB are decimal (Hugging Face's max_shard_size), K/M/G and KiB/MiB/GiB binary (libtpu)."""

import pytest

from r1jax.errors import UserError
from r1jax.sharding.topology import parse_oom, parse_size


@pytest.mark.parametrize("text, expected", [
    ("5GB", 5 * 10**9), ("5gb", 5 * 10**9), ("500MB", 500 * 10**6), ("40KB", 40_000), ("2TB", 2 * 10**12),
    ("4GiB", 4 * 2**30), ("4gib", 4 * 2**30), ("1.5 MiB", 3 * 2**19), ("95.74G", int(95.74 * 2**30)),
    ("16K", 16 * 1024), (" 1000000 ", 1_000_000), ("7B", 7), ("0.5KB", 500),
])
def test_decimal_and_binary_spellings(text, expected):
    assert parse_size(text) == expected


def test_the_two_spellings_of_giga_differ_by_the_binary_factor():
    assert parse_size("1G") == parse_size("1GiB") == 2**30 != parse_size("1GB") == 10**9


@pytest.mark.parametrize("text", ["", "GB", "5 GBs", "1.2.3G", "-1GB", "5XB", "5iB", "1e9", "5 G B"])
def test_malformed_sizes_are_user_errors_naming_the_field(text):
    with pytest.raises(UserError, match=r"^--max-shard-size '.*': expected a size such as 5GB"):
        parse_size(text, "--max-shard-size")


def test_oom_messages_in_gib_spelling_parse_as_binary():
    message = "the total memory required for HLO temporaries (18.12GiB) exceeds available HBM (15.75GiB)"
    assert parse_oom(message) == (int(18.12 * 2**30), int(15.75 * 2**30))
