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
