"""Tasks: deterministic problem generators with verifiers, registered by name.

    task = get_task("countdown", difficulty=2)          # or get_task("arithmetic", digits=3, operands=4)
    problem = task.generate(seed=0, index=17)           # Problem(task, prompt, answer, solution, difficulty)
    task.verify("(3+5)*2", problem.answer, problem.prompt) -> bool

Built in: `arithmetic`, `countdown`, `algebra` (generators and verifiers), `code` (programming problems
with tests, judged only by the sandboxed `code` reward: rl.rewards.code) and `math` (a verifier only, for
user data: math-verify equivalence of LaTeX / plain answers). Verifiers never raise on model text and never
pass it to eval, sympify or parse_expr.
"""

from r1jax.rl.tasks import algebra, arithmetic, code, countdown, math_answer  # noqa: F401  (register the built-ins)
from r1jax.rl.tasks.base import TASKS, Problem, Task, get_task, register_task, strip_markup, task_names

__all__ = ["TASKS", "Problem", "Task", "get_task", "register_task", "strip_markup", "task_names"]
