"""Data: user files (JSONL / Parquet), generated task sources, grain pipelines, tokenizer corpora.

    it = make_iterator(DataConfig(tasks=("countdown",)), batch_size=8, process_index=0, process_count=1)
    batch = next(it)                 # list of 8 problem dicts: task, prompt, answer, solution, difficulty
    state = it.get_state()           # JSON-serialisable; it.set_state(state) resumes exactly (same row)
    tokenizer = build_tokenizer(TokenizerConfig(), DataConfig())   # load tokenizer.path or train on the data
    gsm8k = DataConfig(path="gsm8k.parquet", fields={"prompt": "question"}, answer_format="gsm8k")
    gsm8k.load_file()                # [{"task": "math", "prompt": ..., "answer": "72", "solution": ...}, ...]
"""

from r1jax.rl.data.answers import ANSWER_FORMATS, split_answer
from r1jax.rl.data.config import DataConfig
from r1jax.rl.data.corpus import build_tokenizer, file_corpus, task_corpus
from r1jax.rl.data.pipeline import DataIterator, TaskSource, build_source, make_dataset, make_iterator
from r1jax.rl.data.records import load_problems, read_rows, text_field

__all__ = ["ANSWER_FORMATS", "DataConfig", "DataIterator", "TaskSource", "build_source", "build_tokenizer",
           "file_corpus", "load_problems", "make_dataset", "make_iterator", "read_rows", "split_answer",
           "task_corpus", "text_field"]
