"""More of the Hugging Face tokenizer back end against transformers (and hand-made files): which config names a
special token, and the vocabulary size of a tokenizer whose ids have a gap."""

import json

import pytest
import transformers

from r1jax.model.tokenizer import load_tokenizer
from tests.model.hf_tokenizer_files import write_hf_tokenizer


def test_an_old_config_takes_its_special_tokens_from_special_tokens_map_as_transformers_does(tmp_path):
    """tokenizer_config.json without added_tokens_decoder (an old file): special_tokens_map.json's value wins
    over the config's own, also where the config names one."""
    directory = write_hf_tokenizer(tmp_path, "qwen")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)
    config["eos_token"] = "<|endoftext|>"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    special = json.loads((directory / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "<|im_end|>"
    tok, auto = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))
    assert auto.eos_token == "<|im_end|>"
    assert (tok.special_tokens["eos_token"], tok.eos_id) == (auto.eos_token, auto.eos_token_id)


def test_the_vocabulary_size_is_one_past_the_largest_id_when_ids_have_a_gap(tmp_path):
    """The embedding needs a row for every id the tokenizer can give: 6 rows for ids {0, 1, 5}, not 3."""
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                 "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
                 "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "b": 5}, "unk_token": "<unk>"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<unk>"}))
    tok = load_tokenizer(tmp_path)
    assert tok.encode("a b") == [1, 5]
    assert tok.vocab_size == 6


def test_the_exported_eos_ids_are_every_id_that_stops_a_row(tmp_path):
    """Several eos ids (Qwen3's <|im_end|> and <|endoftext|>): config.json / generation_config.json list them
    all, as the checkpoint's own generation_config.json does, so transformers' generate stops on each."""
    from r1jax.model.hf_tokenizer import token_ids

    directory = write_hf_tokenizer(tmp_path, "qwen")
    listed = json.loads((directory / "generation_config.json").read_text())["eos_token_id"]
    tok = load_tokenizer(directory)
    assert len(listed) == 2 and token_ids(tok)["eos_token_id"] == listed == list(tok.eos_ids)


def test_a_special_tokens_map_that_is_not_json_is_named_also_beside_a_new_config(tmp_path):
    """A config with added_tokens_decoder does not take its tokens from special_tokens_map.json, so a garbage one
    was imported byte for byte, and export-hf shipped a directory transformers cannot load."""
    from r1jax.errors import UserError

    directory = write_hf_tokenizer(tmp_path, "qwen")
    assert "added_tokens_decoder" in json.loads((directory / "tokenizer_config.json").read_text())
    for garbage, said in (("{not json", "is not valid JSON"), ("[]", "expected a JSON object, got list")):
        (directory / "special_tokens_map.json").write_text(garbage)
        with pytest.raises(UserError, match=f"special_tokens_map.json:? {said}"):
            load_tokenizer(directory)
