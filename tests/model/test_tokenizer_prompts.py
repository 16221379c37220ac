"""Chat templates rendered as transformers renders them, prompt formats per run (r1_zero / chat / none) for
both tokenizer back ends, and the errors of a missing or broken template."""

import datetime
import inspect

import jinja2
import pytest
import transformers

from r1jax.errors import UserError
from r1jax.model.chat_template import MAX_INT_BITS, MAX_LENGTH, MAX_LOOP_TURNS
from r1jax.model.hf_tokenizer import save_hf_tokenizer, save_with_prompt_format
from r1jax.model.tokenizer import (R1_ZERO_TEMPLATE, TEMPLATE_NAMES, TokenizerConfig, apply_template, load_tokenizer,
                                   prompt_text, render_prompt, train_tokenizer)
from r1jax.rl.config import load_config
from tests.model.hf_tokenizer_files import DEEPSEEK_BOS, DEEPSEEK_CHAT_TEMPLATE, STYLES, write_hf_tokenizer

TOOL = {"type": "function", "function": {"name": "add", "description": "a + b — «exact»",
                                         "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "日本語で: 3×4 = ?"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
     {"role": "user", "content": "Q2 <|im_end|> {braces}"}],
    [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": "because",
                                        "tool_calls": [{"name": "add", "arguments": {"a": 1}}]}],
]
VARIABLES = [{}, {"enable_thinking": False}, {"enable_thinking": True}, {"tools": [TOOL]}]


@pytest.fixture(scope="module", params=[(style, file) for style in STYLES for file in (False, True)],
                ids=lambda p: f"{p[0]}-{'jinja_file' if p[1] else 'config'}")
def pair(request, tmp_path_factory):
    style, template_file = request.param
    directory = write_hf_tokenizer(tmp_path_factory.mktemp(style), style, template_file=template_file)
    return load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("variables", VARIABLES)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_text_and_ids_equal_transformers(pair, messages, variables, add_generation_prompt):
    tok, auto = pair
    text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **variables)
    assert text == auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                            **variables)
    assert tok.encode(text) == auto.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                        **variables)["input_ids"]


@pytest.mark.parametrize("prompt", ["Compute 3+4", "Solve {x} with <think> tags", "  spaced\nlines  "])
def test_prompt_formats_of_an_hf_tokenizer(pair, prompt):
    tok, auto = pair
    user = [{"role": "user", "content": prompt}]
    assert render_prompt(tok, "chat", prompt) == auto.apply_chat_template(user, add_generation_prompt=True)["input_ids"]
    assert render_prompt(tok, "chat", prompt, {"enable_thinking": False}) == auto.apply_chat_template(
        user, add_generation_prompt=True, enable_thinking=False)["input_ids"]
    r1_zero = R1_ZERO_TEMPLATE.replace("{prompt}", prompt)
    assert prompt_text(tok, "r1_zero", prompt) == r1_zero
    assert render_prompt(tok, "r1_zero", prompt) == auto(r1_zero)["input_ids"]
    assert render_prompt(tok, "none", prompt) == auto(prompt)["input_ids"]
    bos_count = [render_prompt(tok, name, prompt).count(auto.bos_token_id) for name in TEMPLATE_NAMES]
    assert bos_count == ([1, 1, 1] if auto.bos_token == DEEPSEEK_BOS else [0, 0, 0])  # once, from template or tokenizer


def test_prompt_formats_of_the_sentencepiece_tokenizer_are_unchanged():
    tok = train_tokenizer(["User: Assistant: A conversation between", "Compute 3+4 = 7"] * 20, 300)
    prompt = "Compute 3+4"
    assert render_prompt(tok, "chat", prompt) == tok.encode("User: Compute 3+4\nAssistant:", add_bos=True)
    assert render_prompt(tok, "r1_zero", prompt) == tok.encode(R1_ZERO_TEMPLATE.replace("{prompt}", prompt),
                                                               add_bos=True)
    assert render_prompt(tok, "none", prompt) == [tok.bos_id, *tok.encode(prompt)]
    with pytest.raises(UserError, match="unknown template 'alpaca'"):
        render_prompt(tok, "alpaca", prompt)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_chat_template_written_for_the_sentencepiece_tokenizer_renders_its_prompt_format(template, tmp_path):
    """export-hf's chat template, run by transformers: one user turn with the generation prompt is r1jax's
    prompt; without it, the turn alone (the assistant header comes with the assistant turn); a system turn,
    which the prompt formats lack, is an error naming the role. r1jax's own renderer agrees."""
    tok = train_tokenizer(["User: Assistant: A conversation between", "Compute 3+4 = 7"] * 20, 300)
    save_hf_tokenizer(tok, tmp_path, template)
    auto, ours = transformers.AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(tmp_path)
    prompt, header = "Compute {3}+4", "" if template == "none" else "Assistant:"
    text = apply_template(template, prompt)
    user = [{"role": "user", "content": prompt}]
    cases = [(user, True, "<s>" + text), (user, False, "<s>" + text[:len(text) - len(header)]),
             (user + [{"role": "assistant", "content": "7"}], False, "<s>" + text + " 7</s>")]
    for messages, generation_prompt, want in cases:
        assert auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt) == want
        assert ours.apply_chat_template(messages, add_generation_prompt=generation_prompt) == want
    assert auto.apply_chat_template(user, add_generation_prompt=True)["input_ids"] == render_prompt(tok, template,
                                                                                                     prompt)
    system = [{"role": "system", "content": "Be brief."}, *user]
    with pytest.raises(jinja2.TemplateError, match=f"role system is not supported by r1jax's {template} prompt"):
        auto.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
    with pytest.raises(UserError, match="TemplateError: role system is not supported"):
        ours.apply_chat_template(system, add_generation_prompt=True)


def test_control_pieces_written_in_text_need_split_special_tokens_in_transformers(tmp_path):
    """export-hf's known gap (model.hf_tokenizer): transformers matches the special added tokens <s> </s> <pad>
    <unk> wherever their text appears, r1jax encodes that text as characters. split_special_tokens=True gives
    r1jax's ids, and sanitize_control_tokens=True through a chat template (the R1 tags r1_zero's text names
    stay single tokens, as in r1jax)."""
    text = "Strike <s>x</s> out <pad><unk> <think> 7 </think>"
    tok = train_tokenizer(["User: Assistant: A conversation between", "Compute 3+4 = 7", text] * 20, 300)
    save_hf_tokenizer(tok, tmp_path, "r1_zero")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = tok.encode(text, add_bos=True)
    assert tok.bos_id not in ours[1:] and tok.encode("<think>") == [auto.convert_tokens_to_ids("<think>")]
    assert auto(text, split_special_tokens=True)["input_ids"] == ours
    assert auto(text)["input_ids"].count(tok.bos_id) == 2  # the gap: the literal <s> is bos too
    user = [{"role": "user", "content": text}]
    prompt = render_prompt(tok, "r1_zero", text)
    assert auto.apply_chat_template(user, add_generation_prompt=True)["input_ids"] != prompt
    if "sanitize_control_tokens" in inspect.signature(auto.apply_chat_template).parameters:  # transformers 5.25
        assert auto.apply_chat_template(user, add_generation_prompt=True,
                                        sanitize_control_tokens=True)["input_ids"] == prompt


def _hf_dir(tmp_path, template, template_file=False):
    return load_tokenizer(write_hf_tokenizer(tmp_path, "qwen", template_file=template_file, chat_template=template))


def test_chat_without_a_template_or_with_a_broken_one_is_a_user_error_naming_the_file(tmp_path):
    tok = _hf_dir(tmp_path / "none", "")
    assert render_prompt(tok, "r1_zero", "q") == tok.encode(R1_ZERO_TEMPLATE.replace("{prompt}", "q"))
    with pytest.raises(UserError, match=r"none has no chat template \(neither chat_template.jinja nor a "
                                        r"chat_template in tokenizer_config.json\); use the prompt format "
                                        r"r1_zero or none \(tokenizer.template, or --template on generate and "
                                        r"eval\)$"):  # (named only the config key, where the CLI's is --template)
        render_prompt(tok, "chat", "q")
    with pytest.raises(UserError, match=r"tokenizer_config.json's chat_template is not a valid Jinja template "
                                        r"\(line 1"):
        render_prompt(_hf_dir(tmp_path / "syntax", "{% if %}"), "chat", "q")
    with pytest.raises(UserError, match=r"chat_template.jinja failed to render: TemplateError: only system"):
        render_prompt(_hf_dir(tmp_path / "raise", "{{ raise_exception('only system') }}", True), "chat", "q")
    with pytest.raises(UserError, match="failed to render: TypeError"):
        render_prompt(_hf_dir(tmp_path / "type", "{{ messages[0].content + 1 }}"), "chat", "q")


@pytest.mark.parametrize("template,error", [
    ("{{ 1/0 }}", "ZeroDivisionError: division by zero"),
    ("{{ range(10**9)|length }}", "OverflowError: Range too big"),                  # the sandbox's range limit
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError: maximum recursion depth"),
])
def test_python_errors_in_a_template_are_user_errors_naming_the_file(tmp_path, template, error):
    with pytest.raises(UserError, match=f"tokenizer_config.json's chat_template failed to render: {error}"):
        render_prompt(_hf_dir(tmp_path, template), "chat", "q")


LOOP = "{% for i in range(20000) %}"  # the sandbox's range() is bounded; what each turn makes is not


@pytest.mark.parametrize("template,error", [
    ("{{ 'a' * 2**45 }}", r"SecurityError: '\*' would make 35184372088832 characters"),  # a MemoryError traceback
    ("{% set ns = namespace(s='ab') %}{% for i in range(25) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s[0] }}",
     r"SecurityError: '~' would make 16777216 characters"),
    ("{% set ns = namespace(s=[0]) %}{% for i in range(25) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ 1 }}",
     r"SecurityError: '\+' would make 16777216 characters or items"),
    ("{{ 9 ** (9 ** 6) > 0 }}", f"SecurityError: '\\*\\*' would make an integer of about .* more than the "
                                f"{MAX_INT_BITS}"),
    # a width, a count or a repeat past the bounds: 10 GB or more allocated before the rendered text's bound
    ("{{ 'a'|center(10**10) }}", r"SecurityError: center was given 10000000000, more than the 10000000"),
    ("{{ 'x'.ljust(10**10) }}", r"SecurityError: ljust was given 10000000000"),
    ("{{ 'a\n'|indent(10**9) }}", r"SecurityError: indent was given 1000000000"),
    ("{{ '%*d'|format(10**9, 1) }}", r"SecurityError: format was given 1000000000"),
    ("{{ [1]|slice(10**10)|list }}", r"SecurityError: slice was given 10000000000"),
    ("{{ ('a' * 10**6)|replace('a', 'b' * 1000) }}", r"SecurityError: replace would make up to 1000000000 characters"),
    ("{{ (' ' * 10**6).join(['a'] * 1000) }}", r"SecurityError: str.join would make up to 1000001000 characters"),
    ("{{ (['a' * 10**6] * 100)|map('upper')|join }}", r"SecurityError: join would make up to 100000000 characters"),
    ("{{ (' ' * 10**6).join((['a'] * 1000)|map('upper')) }}",  # a generator's items went uncounted: 1 GB
     r"SecurityError: str.join would make up to 1000001000 characters"),
    ("{{ ('\t' * 10**4).expandtabs(10**6) }}", r"SecurityError: expandtabs would make up to 10000010000 characters"),
    ("{{ ('{0}' * 1000).format('a' * 10**5) }}", r"SecurityError: format would make up to 100003000 characters"),
    ("{{ ('%s' * 1000) % (('a' * 10**5,) * 1000) }}", r"SecurityError: % would make up to 100002000 characters"),
    ("{{ '%99999999999d' % 1 }}", r"SecurityError: % would make up to 10000014 characters"),
    ("{{ '{:>99999999999}'.format(1) }}", r"SecurityError: format would make up to 10000016 characters"),
    # a width within MAX_LENGTH in a str.format field, repeated (3 GB from 300 fields: their widths went uncounted)
    ("{{ ('{0:>9999999}' * 300).format(1) }}", r"SecurityError: format would make up to 3000003300 characters"),
    # and a %-field's width after a mapping key (1 GB from 100 fields)
    ("{{ ('%(a)9999999s' * 100) % {'a': 1} }}", r"SecurityError: % would make up to 1000001100 characters"),
    ("{{ ('%(a)9999999s' * 100)|format(a=1) }}", r"SecurityError: format would make up to 1000001100 characters"),
    ("{{ [1, 2]|tojson(indent=10**7) }}", r"SecurityError: tojson would make an indent of 10000000, more than the 64"),
    # hours each
    ("{{ lipsum(100000, False, 99999, 100000) }}", r"SecurityError: lipsum would make up to 10000000000 words"),
    ("{{ ('a' * 10**7)|wordwrap(1) }}", r"SecurityError: wordwrap would make a text of 10000000 characters"),
])
def test_a_template_that_would_exhaust_the_host_is_refused_naming_the_file(tmp_path, template, error):
    with pytest.raises(UserError, match=f"tokenizer_config.json's chat_template failed to render: {error}"):
        render_prompt(_hf_dir(tmp_path, template), "chat", "q")


def test_a_template_the_host_has_no_memory_for_is_a_user_error(tmp_path, monkeypatch):
    from r1jax.model import chat_template

    def exhausted(format):
        raise MemoryError

    monkeypatch.setattr(chat_template, "_strftime_now", exhausted)
    with pytest.raises(UserError, match=r"chat_template failed to render: MemoryError \(out of memory\)"):
        render_prompt(_hf_dir(tmp_path, "{{ strftime_now('%Y') }} (the host is out of memory)"), "chat", "q")


@pytest.mark.parametrize("template,text", [
    ("{{ 'hi %s' % 'there' }} {{ '%5.2f'|format(3.14159) }} {{ 'a,b'.replace(',', ', ') }}", "hi there  3.14 a, b"),
    ("{{ ['x', 'y']|join(', ') }}|{{ 'a\nb'|indent(2) }}|{{ {'a': 1}|tojson(indent=2) }}|{{ '{}-{}'.format(1, 2) }}",
     'x, y|a\n  b|{\n  "a": 1\n}|1-2'),
    ("{{ 'abc'|center(9) }}|{{ ('\t' * 3).expandtabs(2)|length }}|{{ (['a'] * 3)|map('upper')|join('-') }}",
     "   abc   |6|A-A-A"),
    # integers formatted as values, not widths, and a large number's remainder (refused as widths past MAX_LENGTH)
    ("{{ 'cutoff %d' % 20240726 }}|{{ 'id {}'.format(123456789012) }}|{{ '%d, %d, %d'|format(9000000, 9000000, 1) }}|"
     "{{ 12345678901 % 10**8 }}|{{ '%(n)d' % {'n': 10**9} }}", "cutoff 20240726|id 123456789012|9000000, 9000000, 1|"
     "45678901|1000000000"),
    # integers that are no width (refused as widths by any filter), long numbers in a format string's plain text
    ("{{ x|default(12345678901) }}|{{ 'build 123456789012: %s' % 'a' }}|{{ 'v 20240726123 {}'.format(1) }}",
     "12345678901|build 123456789012: a|v 20240726123 1"),
])
def test_the_bounded_filters_and_methods_make_what_jinja2s_do(template, text):
    import jinja2.sandbox

    from r1jax.model.chat_template import ChatTemplate

    assert jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(template).render() == text
    assert ChatTemplate(template, "a test's template", {}).render([{"role": "user", "content": "q"}]) == text


@pytest.mark.parametrize("template", [
    LOOP + LOOP + "{% endfor %}{% endfor %}",                                 # 4 * 10**8 turns making nothing
    LOOP + "{% for j in range(20000) if false %}{% endfor %}{% endfor %}",  # items its filter drops turn too
    "{% for i in range(20000) recursive %}{% if loop.depth < 3 %}{{ loop(range(20000)) }}{% endif %}{% endfor %}",
])
def test_a_template_whose_loops_would_turn_for_hours_is_refused_naming_the_file(tmp_path, template, monkeypatch):
    """jinja2's sandbox bounds each range(), not the loops over them: these ran for minutes to hours. The render
    counts its turns against a tenth of the real bound here (the real one, 10**6, took 2.7-10 s of turning)."""
    from r1jax.model import chat_template

    assert MAX_LOOP_TURNS < 20000 * 20000
    monkeypatch.setattr(chat_template, "MAX_LOOP_TURNS", MAX_LOOP_TURNS // 10)
    with pytest.raises(UserError, match=f"tokenizer_config.json's chat_template failed to render: SecurityError: its "
                                        f"loops would turn more than the {MAX_LOOP_TURNS // 10} times"):
        render_prompt(_hf_dir(tmp_path, template), "chat", "q")


def test_a_template_whose_loop_repeats_bounded_slow_work_stops_at_the_render_time(tmp_path, monkeypatch):
    """Each wordwrap is bounded (MAX_WORDWRAP characters: 0.2 s) and the loops' turns are (10**6), but not their
    product: a loop of wordwraps ran for hours. The loops stop turning after MAX_RENDER_SECONDS (here 0.5 s)."""
    from r1jax.model import chat_template

    monkeypatch.setattr(chat_template, "MAX_RENDER_SECONDS", 0.5, raising=False)
    template = "{% for i in range(40) %}{{ (('a' * 10**5)|wordwrap(1))|length }}{% endfor %}"  # 8 s unbounded
    with pytest.raises(UserError, match="chat_template failed to render: SecurityError: its loops ran past the 0.5 s"):
        render_prompt(_hf_dir(tmp_path, template), "chat", "q")


def test_the_rendered_text_is_bounded_and_a_template_that_renders_nothing_is_named(tmp_path):
    assert MAX_LENGTH < 20000 * 1000
    with pytest.raises(UserError, match=f"chat_template renders more than {MAX_LENGTH} characters"):
        render_prompt(_hf_dir(tmp_path / "long", LOOP + "{{ 'a' * 1000 }}{% endfor %}"), "chat", "q")
    only_system = "{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}{% endif %}{% endfor %}"
    for name, template in (("system", only_system), ("unsafe", "{{ raise_exception.__globals__ }}")):
        with pytest.raises(UserError, match=r"/tokenizer_config.json's chat_template rendered nothing for a user "
                                            r"message \(prompt 'q'\)"):
            render_prompt(_hf_dir(tmp_path / name, template), "chat", "q")


@pytest.mark.parametrize("template", [
    "{% for m in messages %}<|{{ m.role }}|>{% endfor %}<|assistant|>",  # every prompt the same text
    "{% for m in messages %}   {% endfor %}",  # blanks only
])
def test_a_template_that_drops_the_users_text_is_named(tmp_path, template):
    """Every problem's prompt rendered the same: training ran on a policy that could not see its problems."""
    with pytest.raises(UserError, match=r"chat_template rendered a user message without its text \(prompt 'What is "
                                        r"2 \+ 2\?', rendered '"):
        render_prompt(_hf_dir(tmp_path, template), "chat", "What is 2 + 2?")
    trimmed = "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{% endfor %}<|assistant|>"
    assert render_prompt(_hf_dir(tmp_path / "trimmed", trimmed), "chat", " What is 2 + 2?\n")  # its text, trimmed


@pytest.mark.parametrize("template,refusal", [
    ("{{ messages.__class__.__mro__ }}", "unsafe"),                         # no reach into Python internals
    ("{% set xs = [] %}{{ xs.append(1) }}", "unsafe"),                      # immutable sandbox
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", "cannot set '_x'"),   # transformers' namespace
])
def test_templates_run_sandboxed(tmp_path, template, refusal):
    with pytest.raises(UserError, match=f"failed to render: SecurityError: .*{refusal}"):
        render_prompt(_hf_dir(tmp_path, template), "chat", "q")


def test_environment_features_render_as_in_transformers(tmp_path):
    template = ("{{ strftime_now('%Y') }}|{{ dict(a=1) | tojson }}|{{ {'é': '<b>'} | tojson }}|"
                "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}|{{ eos_token }}|{{ custom }}|"
                "{{ bos_token is defined }}|\n"
                "{% for m in messages %}\n    {% if m.content %}\n  [{{ m.role }}]\n    {% endif %}\n{% endfor %}\n")
    directory = write_hf_tokenizer(tmp_path, "qwen", chat_template=template)
    tok, auto = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))
    messages = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    text = tok.apply_chat_template(messages, custom="x")
    assert text == auto.apply_chat_template(messages, tokenize=False, custom="x")
    assert text == (f'{datetime.datetime.now().year}|{{"a": 1}}|{{"é": "<b>"}}|one|<|im_end|>|x|False|\n'
                    "  [user]\n  [user]\n")  # trim_blocks, lstrip_blocks: block tags leave no whitespace


def test_template_and_its_variables_are_run_config():
    assert TEMPLATE_NAMES == ("r1_zero", "chat", "none")
    config = load_config("tiny", ["tokenizer.template=chat", "tokenizer.template_vars.enable_thinking=false"])
    assert config.tokenizer.template == "chat" and config.tokenizer.template_vars == {"enable_thinking": False}
    assert load_config("tiny").tokenizer.template_vars == {}
    # variables only a chat template reads, beside a format that reads none: ignored without a word before
    for template in ("r1_zero", "none"):
        with pytest.raises(UserError, match=rf"tokenizer.template_vars \['enable_thinking'\]: only a chat template "
                                            rf"reads them .* and tokenizer.template is '{template}', which reads none"):
            load_config("tiny", [f"tokenizer.template={template}", "tokenizer.template_vars.enable_thinking=false"])
    with pytest.raises(UserError, match=r"tokenizer.template = 'alpaca': expected one of \['r1_zero', 'chat', "
                                        r"'none'\]"):
        TokenizerConfig(template="alpaca")
    # the variables every render sets itself: a TypeError traceback from the renderer before
    for name in ("add_generation_prompt", "messages"):
        with pytest.raises(UserError, match=f"tokenizer.template_vars.{name}: r1jax sets '{name}' itself"):
            load_config("tiny", ["tokenizer.template=chat", f"tokenizer.template_vars={{{name}: false}}"])


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("template", ["r1_zero", "none"])
def test_an_hf_tokenizer_saved_with_r1jaxs_prompt_format_renders_it_in_transformers(tmp_path, style, template):
    """export-hf --template r1_zero of a policy trained from a base model with that format: the tokenizer's files
    with a chat template rendering it (the bos the tokenizer puts first written by the template, as transformers'
    apply_chat_template adds no special tokens); its own chat_template.jinja, which transformers prefers, left out."""
    source = write_hf_tokenizer(tmp_path / "src", style, template_file=True)
    tok = load_tokenizer(source)
    save_with_prompt_format(tok, tmp_path / "out", template)
    assert not (tmp_path / "out" / "chat_template.jinja").exists()
    for name in ("tokenizer.json", "special_tokens_map.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    for prompt in ("Compute {3}+4", "日本語 <think> x", ""):
        user = [{"role": "user", "content": prompt}]
        assert auto.apply_chat_template(user, add_generation_prompt=True)["input_ids"] == render_prompt(
            tok, template, prompt), prompt
    assert load_tokenizer(tmp_path / "out").encode("hi") == tok.encode("hi")


def test_a_chat_template_without_bos_is_encoded_without_one_though_the_post_processor_adds_it(tmp_path):
    """DeepSeek's post-processor puts bos first; a chat template that does not write it (some fine-tunes'
    templates) renders a prompt without bos in transformers' apply_chat_template(tokenize=True), which encodes
    the text as is: so does render_prompt. The other formats get bos (the tokenizer's own sequence start)."""
    template = DEEPSEEK_CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    directory = write_hf_tokenizer(tmp_path, "deepseek", chat_template=template)
    tok, auto = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))
    user = [{"role": "user", "content": "Compute 3+4"}]
    ids = render_prompt(tok, "chat", "Compute 3+4")
    assert ids == auto.apply_chat_template(user, add_generation_prompt=True)["input_ids"]
    assert ids[0] != auto.bos_token_id
    assert render_prompt(tok, "r1_zero", "Compute 3+4")[0] == auto.bos_token_id


def test_messages_reach_the_template_as_transformers_passes_them(tmp_path):
    """Keys whose value is None are dropped (templates test `'tool_calls' in message`), and a message's reasoning
    is readable as `thinking` and `reasoning_content` whichever name it came under."""
    template = ("{% for m in messages %}[{% if 'tool_calls' in m %}T{% endif %}{{ m.thinking or '' }}|"
                "{{ m.reasoning_content or '' }}|{{ m.reasoning or '' }}|{{ m.content }}]{% endfor %}")
    directory = write_hf_tokenizer(tmp_path, "qwen", chat_template=template)
    tok, auto = load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))
    for message, rendered in (({"tool_calls": None, "reasoning_content": "R"}, "[R|R||A]"),
                              ({"thinking": "X"}, "[X|X||A]"),
                              ({"reasoning": "Y", "tool_calls": [{"name": "f"}]}, "[TY|Y|Y|A]")):
        messages = [{"role": "assistant", "content": "A", **message}]
        assert tok.apply_chat_template(messages) == auto.apply_chat_template(messages, tokenize=False) == rendered
