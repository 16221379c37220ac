"""model.chat_template's own edges: the bounds on `*` with the number first and on integer products, the
caller's variables over the tokenizer's named tokens, and the refusals before a render."""

import pytest

from r1jax.errors import UserError
from r1jax.model.chat_template import MAX_INT_BITS, MAX_LENGTH, ChatTemplate

USER = [{"role": "user", "content": "hi"}]


def render(source, messages=USER, special=None, **variables):
    return ChatTemplate(source, "test template", special or {}).render(messages, **variables)


@pytest.mark.parametrize("expression", ["'ab' * n", "n * 'ab'", "[1, 2] * n", "n * [1, 2]"])
def test_a_repetition_past_the_bound_is_refused_whichever_side_the_count_is_on(expression):
    assert render("{{ (" + expression.replace("n", "3") + ") | length }}") == "6"
    with pytest.raises(UserError, match="more than the"):
        render("{{ (" + expression.replace("n", str(MAX_LENGTH)) + ") | length }}")


def test_an_integer_product_past_the_bound_is_refused():
    small = 2 ** (MAX_INT_BITS // 4)
    assert render("{{ (a * a) == b }}", a=small, b=small * small) == "True"  # built outside the template
    big = 2 ** (MAX_INT_BITS // 2 + 8)
    with pytest.raises(UserError, match="bits"):
        render("{{ a * a }}", a=big)


def test_a_callers_variable_wins_over_a_named_token_of_the_same_name():
    special = {"eos_token": "<eos>", "bos_token": "<bos>"}
    assert render("{{ bos_token }}{{ eos_token }}", special=special) == "<bos><eos>"
    assert render("{{ bos_token }}{{ eos_token }}", special=special, eos_token="</s>") == "<bos></s>"


def test_reserved_variables_and_no_messages_are_refused():
    template = ChatTemplate("{{ messages | length }}", "test template", {})
    with pytest.raises(UserError, match="'messages' is set by r1jax itself"):
        template.render(USER, messages=[])  # `messages` is positional-only: this one is an extra variable
    with pytest.raises(UserError, match="no messages to render"):
        render("{{ messages | length }}", messages=[])


@pytest.mark.parametrize("tools", [None, [], [{"type": "function", "function": {"name": "f"}}]])
def test_tools_and_documents_reach_the_template_as_transformers_passes_them(tmp_path, tools):
    """No tools is none (a template testing `tools is not none`, as Llama 3.1's does, writes no tool block), not
    an empty list."""
    import transformers

    from r1jax.model.tokenizer import load_tokenizer
    from tests.model.hf_tokenizer_files import write_hf_tokenizer

    template = "{{ tools is none }}|{{ tools | length if tools is not none else '-' }}|{{ documents is none }}"
    directory = write_hf_tokenizer(tmp_path, "qwen", chat_template=template)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory)).apply_chat_template(
        USER, tools=tools, tokenize=False)
    assert theirs.startswith(str(tools is None))
    assert load_tokenizer(directory).apply_chat_template(USER, tools=tools) == theirs


def test_a_text_of_exactly_the_bound_renders_and_one_more_character_is_refused():
    assert len(render("{{ 'a' * n }}", n=MAX_LENGTH)) == MAX_LENGTH
    with pytest.raises(UserError, match=f"renders more than {MAX_LENGTH} characters"):
        render("{{ 'a' * n }}{{ 'b' }}", n=MAX_LENGTH)


def test_a_message_giving_its_reasoning_under_two_names_renders_as_in_transformers(tmp_path):
    """reasoning_content is the one templates read: it wins over `thinking` (each name keeps its own value)."""
    import transformers

    from r1jax.model.tokenizer import load_tokenizer
    from tests.model.hf_tokenizer_files import write_hf_tokenizer

    template = "{% for m in messages %}{{ m.reasoning_content }}|{{ m.thinking }}|{{ m.content }};{% endfor %}"
    directory = write_hf_tokenizer(tmp_path, "qwen", chat_template=template)
    messages = [USER[0], {"role": "assistant", "content": "a", "thinking": "T", "reasoning_content": "R"},
                {"role": "assistant", "content": "b", "reasoning": "S"}]
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory)).apply_chat_template(messages, tokenize=False)
    assert theirs == "||hi;R|T|a;S|S|b;"
    assert load_tokenizer(directory).apply_chat_template(messages) == theirs
