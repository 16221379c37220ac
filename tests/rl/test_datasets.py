"""Real datasets without glue code: GSM8K-style and MATH-style rows in JSONL and Parquet map, through
`data.fields` and `data.answer_format`, to problems whose reference answers are the ones written by hand
below, and the training reward scores the right answer 1 and a wrong one 0."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.errors import UserError
from r1jax.model.tokenizer import TokenizerConfig
from r1jax.rl.config import load_config
from r1jax.rl.data import DataConfig, build_tokenizer, file_corpus, make_iterator, split_answer
from r1jax.rl.rewards import RewardsConfig, ScoreItem, score_item
from r1jax.rl.train.preflight import preflight
from r1jax.sharding.mesh import build_mesh

from tests.rl.conftest import TRAIN_CONFIG

# (question, GSM8K answer text, reference answer, reasoning, a wrong answer)
GSM8K = [
    ("Natalia sold clips to 48 friends in April and half as many in May. How many in all?",
     "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
     "72", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.", "73"),
    ("A bike costs $1,200 and a helmet $34. What do both cost?",
     "1,200 + 34 = <<1200+34=1234>>1,234 dollars.\n#### 1,234", "1234", "1,200 + 34 = <<1200+34=1234>>1,234 dollars.",
     "1243"),
    ("It was 3 degrees and the temperature fell 10 degrees. What is it now?",
     "3 - 10 = <<3-10=-7>>-7\n#### -7", "-7", "3 - 10 = <<3-10=-7>>-7", "7"),
    ("A town of 1,000 grows to 1,000 times its size. How many people live there?",
     "1,000 * 1,000 = <<1000*1000=1000000>>1,000,000\n#### 1,000,000", "1000000",
     "1,000 * 1,000 = <<1000*1000=1000000>>1,000,000", "100000"),
    ("Three of four slices are eaten. What fraction is eaten?",
     "3 of 4 is 3/4.\n#### 3/4", "3/4", "3 of 4 is 3/4.", "4/3"),
]

# (problem, MATH solution text, reference answer, a wrong answer)
MATH = [
    ("What is $\\sin 60^\\circ$?", "It is $\\frac{\\sqrt{3}}{2}$, so the answer is $\\boxed{\\frac{\\sqrt{3}}{2}}$.",
     "\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}"),
    ("Find $n$.", "A first try gives $\\boxed{2}$, which fails. Then $n = \\boxed{3}$.", "3", "2"),
    ("Compute $3 \\cdot 4$.", "We get $\\fbox{12}$.", "12", "13"),
    ("Compute $2 + 3$.", "Adding, we get $\\boxed 5$.", "5", "6"),
    ("Solve $x \\le -1$.", "The set is $\\boxed{(-\\infty, -1]}$.", "(-\\infty, -1]", "(-\\infty, 1]"),
    ("Solve $3x = -2$.", "Dividing, $x = \\boxed{-\\frac{2}{3}}$.", "-\\frac{2}{3}", "\\frac{2}{3}"),
]

GSM8K_MAPPING = {"fields": {"prompt": "question"}, "answer_format": "gsm8k"}
MATH_MAPPING = {"fields": {"prompt": "problem", "answer": "solution"}, "answer_format": "boxed"}


def gsm8k_rows():
    return [{"question": q, "answer": a} for q, a, *_ in GSM8K]


def math_rows():
    return [{"problem": p, "level": "Level 2", "type": "Algebra", "solution": s} for p, s, *_ in MATH]


def expected_gsm8k():
    return [{"task": "math", "prompt": q, "answer": ref, "difficulty": 0,
             "solution": f"<think> {reasoning} </think> <answer> {ref} </answer>"} for q, _, ref, reasoning, _ in GSM8K]


def expected_math():
    return [{"task": "math", "prompt": p, "answer": ref, "solution": f"<think> {s} </think> <answer> {ref} </answer>",
             "difficulty": 0} for p, s, ref, _ in MATH]


def write(path, rows):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_gsm8k_and_math_rows_map_to_problems(tmp_path, suffix):
    gsm8k = write(tmp_path / f"gsm8k{suffix}", gsm8k_rows())
    assert DataConfig(path=str(gsm8k), **GSM8K_MAPPING).load_file() == expected_gsm8k()
    math = write(tmp_path / f"math{suffix}", math_rows())
    assert DataConfig(path=str(math), **MATH_MAPPING).load_file() == expected_math()


def test_the_training_reward_scores_the_mapped_answers(tmp_path):
    """Right answers score accuracy 1 and wrong ones 0, through the mapped task's verifier."""
    rewards = RewardsConfig(names=("accuracy",), weights=(1.0,))
    mapped = (DataConfig(path=str(write(tmp_path / "g.jsonl", gsm8k_rows())), **GSM8K_MAPPING).load_file()
              + DataConfig(path=str(write(tmp_path / "m.jsonl", math_rows())), **MATH_MAPPING).load_file())
    answers = [(ref, wrong) for _, _, ref, _, wrong in GSM8K] + [(ref, wrong) for _, _, ref, wrong in MATH]
    for problem, (right, wrong) in zip(mapped, answers, strict=True):
        def accuracy(answer):
            item = ScoreItem(prompt=problem["prompt"], completion=f"<think> ok </think> <answer> {answer} </answer>",
                             reference=problem["answer"], task=problem["task"])
            return score_item(item, rewards)["accuracy"]

        assert (accuracy(right), accuracy(wrong)) == (1.0, 0.0), problem


@pytest.mark.parametrize("text,answer", [
    ("\\boxed{x^{2}+1}", "x^{2}+1"), ("\\boxed {x}", "x"), ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),  # an escaped brace does not open a group
    ("\\boxed{4} then \\boxedsymbol", "4"),  # another command is not a box
    ("$\\boxed 7$ and more", "7"), ("\\boxed 7.\nNext line", "7"), ("\\fbox{1} then \\boxed{2}", "2"),
    ("\\boxed{\\boxed{5}}", "5"),
])
def test_last_boxed_forms(text, answer):
    assert split_answer(text, "boxed") == (answer, text)


@pytest.mark.parametrize("text,answer", [
    ("#### 1,234.5", "1234.5"), ("#### -1,000", "-1000"), ("#### 1, 2", "1, 2"), ("#### 12,34", "12,34"),
    ("a #### b\n#### 9", "9"),  # the last marker
])
def test_gsm8k_final_answers(text, answer):
    assert split_answer(text, "gsm8k")[0] == answer


def test_a_config_file_and_overrides_give_an_iterator_over_the_mapped_rows(tmp_path):
    gsm8k = write(tmp_path / "gsm8k.parquet", gsm8k_rows())
    yaml = tmp_path / "run.yaml"
    yaml.write_text(f"data: {{path: {gsm8k}, fields: {{prompt: question}}, answer_format: gsm8k}}\n")
    config = load_config(yaml)
    batches = list(make_iterator(config.data, 1, repeat=False))
    assert sorted(b[0]["prompt"] for b in batches) == sorted(p["prompt"] for p in expected_gsm8k())
    assert all(b[0] in expected_gsm8k() for b in batches)

    math = write(tmp_path / "math.jsonl", math_rows())
    config = load_config("tiny", [f"data.path={math}", "data.fields.prompt=problem", "data.fields.answer=solution",
                                  "data.answer_format=boxed"])
    assert config.data.fields == {"prompt": "problem", "answer": "solution"}
    rows = [row for batch in make_iterator(config.data, 2, repeat=False) for row in batch]
    assert len(rows) == 6 and sorted(r["answer"] for r in rows) == sorted(p["answer"] for p in expected_math())


def test_rows_in_r1jax_own_fields_read_unmapped_and_the_tokenizer_corpus_reads_mapped_columns(tmp_path):
    own = write(tmp_path / "samples.jsonl", [{"prompt": "q", "answer": "4", "solution": "s", "task": "math"}])
    mapped = DataConfig(path="elsewhere.jsonl", **GSM8K_MAPPING)
    assert mapped.for_own_file(str(own)).load_file() == [
        {"task": "math", "prompt": "q", "answer": "4", "solution": "s", "difficulty": 0}]
    with pytest.raises(UserError, match="field 'question' \\(data.fields.prompt\\) is missing"):
        mapped.load_file(str(own))
    gsm8k = write(tmp_path / "gsm8k.jsonl", gsm8k_rows())
    corpus = list(file_corpus(gsm8k, {"prompt": "question"}))
    assert GSM8K[0][0] in corpus and GSM8K[0][1] in corpus


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_the_tokenizer_corpus_of_a_json_lines_file_is_its_rows_text_not_their_json(tmp_path, suffix):
    """A `.json` data file (JSON lines, as the data reader takes it) was read as a text file: the run's tokenizer
    learned `{"question": "` and the other keys, and read the columns data.fields maps as they were."""
    path = write(tmp_path / f"gsm8k{suffix}", gsm8k_rows())
    corpus = list(file_corpus(path, {"prompt": "question"}))
    assert GSM8K[0][0] in corpus and GSM8K[0][1] in corpus
    assert not any('"question"' in text for text in corpus)


def test_a_few_rows_still_build_the_runs_tokenizer(tmp_path):
    """Three short rows (9 lines of text; `r1jax tokenizer train` asks for 10) train the run's tokenizer: the
    prompt templates every corpus starts with give it pieces to learn, and byte fallback encodes any text."""
    path = write(tmp_path / "three.jsonl", [{"prompt": f"{i}+{i}?", "answer": str(2 * i), "solution": str(2 * i)}
                                            for i in range(3)])
    tokenizer = build_tokenizer(TokenizerConfig(vocab_size=300), DataConfig(path=str(path)))
    assert tokenizer.vocab_size == 300 and tokenizer.decode(tokenizer.encode("7+7? 14")) == "7+7? 14"


@pytest.mark.parametrize("mapping,row,message", [
    (GSM8K_MAPPING, {"prompt": "q", "answer": "#### 1"}, r"row 3: field 'question' \(data.fields.prompt\) is missing"),
    (GSM8K_MAPPING, {"question": "q"}, r"row 3: field 'answer' is missing"),
    (GSM8K_MAPPING, {"question": "q", "answer": "it is 5"}, r"row 3: field 'answer' \(data.answer_format=gsm8k\): "
                                                             r"no '####'"),
    (GSM8K_MAPPING, {"question": "q", "answer": "so ####"}, r"row 3: .*nothing after the last '####'"),
    (GSM8K_MAPPING, {"question": "q", "answer": 5}, r"row 3: field 'answer' must be a string, got int"),
    (MATH_MAPPING, {"problem": "p", "solution": "it is 5"}, r"row 3: field 'solution' \(data.answer_format=boxed\): "
                                                             r"no \\boxed"),
    (MATH_MAPPING, {"problem": "p", "solution": "$\\boxed{\\frac{1}{2}$"}, r"row 3: .*has no closing brace"),
    (MATH_MAPPING, {"problem": "p", "solution": "\\boxed{ }"}, r"row 3: .*the last \\boxed is empty"),
    (MATH_MAPPING, {"problem": "p", "answer": "\\boxed{1}"},
     r"row 3: field 'solution' \(data.fields.answer\) is missing"),
])
def test_a_row_the_mapping_does_not_fit_names_file_row_and_field(tmp_path, mapping, row, message):
    good = gsm8k_rows()[:2] if mapping is GSM8K_MAPPING else math_rows()[:2]
    path = write(tmp_path / "bad.jsonl", [*good, row, *good])
    with pytest.raises(UserError, match=f"bad.jsonl: {message}"):
        DataConfig(path=str(path), **mapping).load_file()


def test_sft_rows_take_the_derived_solution_and_need_one(tmp_path):
    path = write(tmp_path / "g.jsonl", [{"question": "q", "answer": "r\n#### 1"},
                                        {"question": "q2", "answer": "#### 2"}])
    data = DataConfig(path=str(path), **GSM8K_MAPPING)
    assert [p["solution"] for p in data.load_file()] == ["<think> r </think> <answer> 1 </answer>", ""]
    with pytest.raises(UserError, match=r"g.jsonl: row 2: field 'solution' is missing"):
        data.load_file(need_solution=True)


@pytest.mark.parametrize("answer_format,answer", [
    ("gsm8k", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 in all.\n#### 72"),
    ("boxed", "We add: $48+24=\\boxed{72}$."),
])
def test_a_derived_worked_solution_earns_the_rewards_it_trains_for(tmp_path, answer_format, answer):
    # an SFT stage trains on it: the reasoning alone (GSM8K's text before ####) taught the model to stop
    # with no answer (accuracy 0 and format 0 on its own targets); a MATH text had no format
    path = write(tmp_path / "d.jsonl", [{"question": "How many clips?", "answer": answer}])
    (row,) = DataConfig(path=str(path), fields={"prompt": "question"}, answer_format=answer_format).load_file(
        need_solution=True)
    assert row["answer"] == "72" and row["solution"].endswith("</think> <answer> 72 </answer>")
    assert ("<<48/2=24>>" in row["solution"]) == (answer_format == "gsm8k")  # the dataset's text as it is
    item = ScoreItem(prompt=row["prompt"], completion=row["solution"], reference=row["answer"], task=row["task"])
    assert score_item(item, RewardsConfig()) == {"accuracy": 1.0, "format": 1.0}


@pytest.mark.parametrize("overrides,message", [
    (["data.answer_format=latex"], "data.answer_format='latex': expected one of raw, gsm8k, boxed"),
    (["data.fields.question=prompt"], "data.fields.question: not a problem field"),
    (["data.fields.prompt=''"], "data.fields.prompt='': expected a column name"),
    # two fields read one column: {prompt: answer} trained on each row's answer as its prompt
    (["data.fields.prompt=text", "data.fields.answer=text"],
     "data.fields.prompt and data.fields.answer both name column 'text': each problem field reads a column of its "
     "own (only answer and solution may share one: the answer's text gives the worked solution); map one of them "
     "to another column"),
    # a field left unmapped reads the column of its own name, which the mapping gave another field
    (["data.fields.prompt=answer"], "data.fields.prompt='answer' is the column answer reads by its own name "
                                    "(unmapped): each problem field reads a column of its own"),
    (["data.fields.answer=task"], "data.fields.answer='task' is the column task reads by its own name (unmapped): "
                                  "each problem field reads a column of its own (only answer and solution may share "
                                  "one: the answer's text gives the worked solution); map data.fields.task to another "
                                  "column (one the file lacks: every row's task is then the default task)"),
    (["data.fields.task=prompt"], "map data.fields.prompt to another column$"),  # no such advice for a prompt
    (["data.fields.prompt=x", "data.fields.answer=x", "data.fields.solution=x"], "data.fields.prompt and "
                                                                                  "data.fields.answer both name"),
])
def test_a_bad_mapping_is_named_when_the_config_loads(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", "\\(").replace(")", "\\)")) as info:
        load_config("tiny", overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fields", [{"answer": "solution"}, {"solution": "answer"}, {"answer": "x", "solution": "x"},
                                    {"prompt": "problem", "answer": "solution"}, {"prompt": "question"}])
def test_answer_and_solution_may_share_a_column_and_other_mappings_load(fields):
    """MATH's {answer: solution}: the answer's text gives the reference answer and the worked solution."""
    assert DataConfig(fields=fields).fields == fields


# Countdown rows as the usual dataset has them: the numbers in a list, the target in its own column.
COUNTDOWN_PROMPT = "Using the numbers [19, 36, 55, 7], create an equation that equals 65. Use each number once."
COUNTDOWN_ROWS = [{"task": "countdown", "prompt": COUNTDOWN_PROMPT, "target": 65, "expression": "55+36-19-7"},
                  {"task": "countdown", "prompt": "Make 16 from 2, 3, 5 (+-*/)", "target": 16, "expression": "(3+5)*2"}]


@pytest.mark.parametrize("column", ["target", "expression"])
def test_countdown_rows_with_the_numbers_in_the_prompt_score_the_expression(tmp_path, column):
    """The reference may be the target alone when the prompt lists the numbers: the expression scores 1 and
    the target alone ("65", which the reference's own numbers would allow) scores 0."""
    path = write(tmp_path / "countdown.jsonl", COUNTDOWN_ROWS)
    problems = DataConfig(path=str(path), fields={"answer": column}).load_file()
    rewards = RewardsConfig(names=("accuracy",), weights=(1.0,))
    for problem, row in zip(problems, COUNTDOWN_ROWS, strict=True):
        def accuracy(answer):
            item = ScoreItem(prompt=problem["prompt"], completion=f"<think> ok </think> <answer> {answer} </answer>",
                             reference=problem["answer"], task="countdown")
            return score_item(item, rewards)["accuracy"]

        assert (accuracy(row["expression"]), accuracy(row["target"]), accuracy(f"{row['target']} = {row['target']}")) \
            == (1.0, 0.0, 0.0), problem


@pytest.mark.parametrize("prompt,answer,message", [
    ("Reach 65 with 19, 36, 55 and 7.", 65, "is not an expression of the numbers, and the prompt does not list them"),
    ("Reach 65 with 19, 36, 55 and 7.", "55+36-19-7 = 64", "is not an arithmetic expression"),
    (COUNTDOWN_PROMPT, "sixty-five", "is not an arithmetic expression"),
    (COUNTDOWN_PROMPT, "50+15", "uses numbers that the prompt does not list"),
])
def test_a_countdown_row_whose_reference_cannot_be_checked_is_named(tmp_path, prompt, answer, message):
    good = {"task": "countdown", "prompt": "Reach 65 with 19, 36, 55 and 7.", "answer": "55+36-19-7"}
    path = write(tmp_path / "bad.jsonl", [good, good, {"task": "countdown", "prompt": prompt, "answer": answer}])
    with pytest.raises(UserError, match=f"bad.jsonl: row 3: field 'answer': .*{message}"):
        DataConfig(path=str(path)).load_file()


@pytest.fixture(scope="module")
def tokenizer():
    config = load_config(TRAIN_CONFIG)
    return build_tokenizer(config.tokenizer, config.data)


def test_preflight_reads_a_mapped_dataset_and_names_a_row_without_the_mapped_field(tokenizer, tmp_path):
    rows = gsm8k_rows() * 2  # 10 rows: a batch for the SFT stage (8) and for GRPO (4)
    overrides = ["data.fields.prompt=question", "data.answer_format=gsm8k", "sampling.prompt_buckets=[32,512]"]
    config = load_config(TRAIN_CONFIG, [f"data.path={write(tmp_path / 'good.jsonl', rows)}", *overrides])
    preflight(config, tokenizer, build_mesh(config.sharding), config.sharding.logical_rules())
    bad = write(tmp_path / "bad.jsonl", rows[:6] + [{"problem": "q", "answer": "#### 1"}] + rows[:3])
    config = load_config(TRAIN_CONFIG, [f"data.path={bad}", *overrides])
    with pytest.raises(UserError, match=rf"data.path='{bad}' \(stage sft\): {bad}: row 7: field 'question' "
                                        r"\(data.fields.prompt\) is missing"):
        preflight(config, tokenizer, build_mesh(config.sharding), config.sharding.logical_rules())
