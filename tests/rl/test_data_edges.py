"""Edges of the data modules the broader data tests leave open: a task at an explicit difficulty, an empty
data file, a batch size of 0, and what the tokenizer corpus of generated tasks holds."""

import pytest

from r1jax.errors import UserError
from r1jax.model.tokenizer import TEMPLATES, TokenizerConfig
from r1jax.rl.data import DataConfig, TaskSource, build_tokenizer, load_problems, make_dataset, task_corpus
from r1jax.rl.tasks import get_task


def test_a_task_at_an_explicit_difficulty_is_that_difficulty_with_the_configs_knobs():
    data = DataConfig(tasks=("arithmetic",), difficulty=1)
    assert data.task("arithmetic").difficulty == 1
    assert data.task("arithmetic", 3).difficulty == 3
    # the same problems as the task built directly at that level
    assert data.task("arithmetic", 3).generate(0, 5).prompt == get_task("arithmetic", 3).generate(0, 5).prompt


def test_an_empty_data_file_is_named(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(UserError, match="has no rows"):
        load_problems(path)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused(batch_size):
    source = TaskSource([get_task("arithmetic")], seed=0, size=16)
    with pytest.raises(UserError, match="expected >= 1"):
        make_dataset(source, batch_size=batch_size, process_index=0, process_count=1)


def test_the_task_corpus_holds_templates_prompts_and_solutions_of_every_level():
    corpus = list(task_corpus(["arithmetic"], problems_per_level=2, seed=3))
    templates = list(TEMPLATES.values())
    assert corpus[:len(templates)] == templates
    expected = []
    for level in get_task("arithmetic").levels:
        for index in range(2):
            problem = get_task("arithmetic", level).generate(3, index)
            expected += [problem.prompt, problem.solution]
    assert corpus[len(templates):] == expected


def test_a_trained_tokenizer_learns_the_corpus_of_the_configs_seed(monkeypatch):
    import r1jax.rl.data.corpus as corpus_module

    seen = {}

    def fake_train(corpus, vocab_size, model_type):
        seen["corpus"] = list(corpus)
        return "tokenizer"

    monkeypatch.setattr(corpus_module, "task_corpus",
                        lambda names, seed=0: task_corpus(names, problems_per_level=2, seed=seed))
    monkeypatch.setattr(corpus_module, "train_tokenizer", fake_train)
    assert build_tokenizer(TokenizerConfig(), DataConfig(tasks=("arithmetic",), seed=7)) == "tokenizer"
    assert seen["corpus"] == list(task_corpus(["arithmetic"], problems_per_level=2, seed=7))
    assert seen["corpus"] != list(task_corpus(["arithmetic"], problems_per_level=2, seed=0))


@pytest.mark.parametrize("text,named", [
    ('[{"prompt": "q", "answer": "1"}]',
     r"row 1: expected a JSON object, got list; .*not a JSON array: .*jq -c '\.\[\]'"),
    ('[\n {"prompt": "q", "answer": "1"}\n]\n', r"row 1: not valid JSON \(Expecting value\); .*not a JSON array"),
    ('\n{\n "prompt": "q",\n "answer": "1"\n}\n',
     r"row 2: not valid JSON .*not an object over several lines: .*jq -c \."),
])
def test_a_json_file_that_is_one_document_is_named_as_not_json_lines(tmp_path, text, named):
    """A `.json` dataset saved whole (an array, or an indented object) said only "expected a JSON object, got
    list" or "Expecting property name": the reader takes JSON Lines, and the message now says so."""
    path = tmp_path / "data.json"
    path.write_text(text)
    with pytest.raises(UserError, match=named):
        load_problems(path)
