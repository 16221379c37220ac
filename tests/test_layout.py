"""The repository's layout: one direction of dependencies, every package folder shipped in the wheel, every
third-party import a declared dependency, and no dependency's floor a release that fails beside the others.

`sharding` imports nothing of the project but `r1jax.errors` and `r1jax.files`; `model` also imports
`sharding`; `rl` imports both. Imports are read with `ast` from every module under sharding/, model/ and rl/,
at module level and inside functions alike (and `importlib.import_module("...")` with a literal name);
relative imports are resolved against the importing module. A bare `model` / `rl` / `sharding` import (no
`r1jax.`) is an error anywhere: installed, those names do not exist.
"""

import ast
import pathlib
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sharding", "model", "rl")
MAY_IMPORT = {"sharding": set(), "model": {"sharding"}, "rl": {"sharding", "model"}}
SHARED = {"errors", "files"}  # r1jax's own modules every package may use


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    """The installed name of a source file: sharding/params.py -> r1jax.sharding.params (a package's
    __init__.py -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["r1jax", *parts])


def imported_names(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every absolute module (or `from` target) name `source` imports, wherever the import statement is."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            names += [stem] + [f"{stem}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            names.append(str(node.args[0].value))
    return names


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What `module` (an r1jax.<package>... name) imports against the direction of dependencies."""
    own = module.split(".")[1]
    allowed = MAY_IMPORT[own] | SHARED
    found = {}
    for name in imported_names(source, module, is_package):
        parts = name.split(".")
        if parts[0] in PACKAGES:
            found[name] = f"{module} imports bare {name!r}: use r1jax.{name}"
        elif parts[0] == "r1jax" and len(parts) > 1 and parts[1] not in allowed | {own}:
            found[name] = f"{module} imports {name} ({own} may import only r1jax.{{{', '.join(sorted(allowed))}}})"
    # `from a.b import c` names both a.b and a.b.c: report the module, not each name taken from it
    return sorted(text for name, text in found.items() if not any(name.startswith(f"{m}.") for m in found))


def source_files():
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_packages_depend_in_one_direction():
    found = [v for path in source_files()
             for v in violations(path.read_text(), module_name(path), path.name == "__init__.py")]
    assert found == []


@pytest.mark.parametrize("module, source, expected", [
    ("r1jax.sharding.aot", "import jax\n\ndef f():\n    from r1jax.rl.sampler import generate\n",
     ["r1jax.sharding.aot imports r1jax.rl.sampler (sharding may import only r1jax.{errors, files})"]),
    ("r1jax.model.hf_io", "def f():\n    from ..rl import config\n",
     ["r1jax.model.hf_io imports r1jax.rl (model may import only r1jax.{errors, files, sharding})"]),
    ("r1jax.sharding.mesh", "from r1jax import model\n",
     ["r1jax.sharding.mesh imports r1jax.model (sharding may import only r1jax.{errors, files})"]),
    ("r1jax.rl.sampler", "import model.config\n", ["r1jax.rl.sampler imports bare 'model.config': use "
                                                   "r1jax.model.config"]),
    ("r1jax.model.factory", "import importlib\nimportlib.import_module('r1jax.rl.update')\n",
     ["r1jax.model.factory imports r1jax.rl.update (model may import only r1jax.{errors, files, sharding})"]),
    ("r1jax.rl.aot", "from r1jax.model.factory import abstract_policy\nfrom ..sharding.mesh import build_mesh\n"
                     "from r1jax.errors import UserError\nfrom . import sampler\n", []),
    ("r1jax.model.hf_io", "from r1jax.sharding.params import path_keys\nfrom .config import ModelConfig\n", []),
])
def test_the_checker_finds_imports_against_the_direction(module, source, expected):
    assert violations(source, module) == expected


def test_relative_imports_resolve_from_a_package_init():
    assert "r1jax.rl.cli.main" in imported_names("from . import main\n", "r1jax.rl.cli", is_package=True)
    assert "r1jax.rl.config" in imported_names("from ..config import Config\n", "r1jax.rl.cli.main")


def package_folders(root: pathlib.Path) -> set[str]:
    """The installed name of every folder under model/, rl/, sharding/ holding an __init__.py."""
    return {module_name(p, root) for package in PACKAGES for p in (root / package).rglob("__init__.py")}


def test_every_package_folder_ships_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    assert package_folders(ROOT) - listed == set()  # a new subpackage must be added to [tool.setuptools]
    in_packages = {name for name in listed if name.partition(".")[2].split(".")[0] in PACKAGES}
    assert in_packages == package_folders(ROOT)  # and nothing listed is gone
    assert {setuptools["package-dir"][f"r1jax.{p}"] for p in PACKAGES} == set(PACKAGES)


def test_the_build_requires_a_setuptools_that_reads_the_license_expression():
    """`license = "MIT"` is an SPDX expression (PEP 639), which setuptools reads from 77 on: 76 refused the
    file ("`project.license` must be valid exactly by one definition"), so `pip install .` without build
    isolation failed under the `setuptools>=68` the build system asked for."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(pyproject["project"]["license"], str)
    floors = [Requirement(r) for r in pyproject["build-system"]["requires"]]
    floors = [spec for r in floors if r.name == "setuptools" for spec in r.specifier if spec.operator == ">="]
    assert floors and all(Version(spec.version) >= Version("77") for spec in floors)


def test_a_new_subpackage_is_found(tmp_path):
    for folder in ("rl", "rl/new", "model", "sharding"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "rl" / "data_only").mkdir()  # no __init__.py: not a package
    assert package_folders(tmp_path) == {"r1jax.rl", "r1jax.rl.new", "r1jax.model", "r1jax.sharding"}


def _distribution(requirement: str) -> str:
    """A requirement's distribution name, normalised as PEP 503 does ("PyYAML>=6" -> "pyyaml")."""
    name = requirement.split(";")[0].split("[")[0]
    for mark in "<>=!~ ":
        name = name.split(mark)[0]
    return name.strip().lower().replace("_", "-").replace(".", "-")


def third_party_imports() -> dict[str, bool]:
    """Top-level modules outside the standard library and r1jax that the shipped code imports -> whether any
    import of it is at a module's top level (else only inside functions: an optional, lazy import)."""
    import sys

    found: dict[str, bool] = {}
    for package in (*PACKAGES, "r1jax"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            top = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    root = name.split(".")[0]
                    if root in sys.stdlib_module_names or root in ("r1jax", "__future__") or root in PACKAGES:
                        continue
                    if path.name in ("sandbox_runner.py", "sandbox_judge.py", "sandbox_raises.py") and \
                            root.startswith("sandbox_"):
                        continue  # copied in beside the runner, imported by its file name
                    found[root] = found.get(root, False) or id(node) in top
    return found


def test_every_third_party_module_the_package_imports_is_a_declared_dependency():
    """PyYAML (rl.config) and latex2sympy2_extended (whose private helpers rl.tasks.math_answer hardens) came
    only through other packages' dependencies; psutil was declared and imported by a test alone. A module
    imported at a module's top level must be a runtime dependency; one imported only inside a function (the
    benchmarks' torch and transformers, libtpu's) may be an extra's."""
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_distribution(r) for r in project["dependencies"]}
    extras = {_distribution(r) for group in project["optional-dependencies"].values() for r in group}
    providers = packages_distributions()
    undeclared, lazy_only = [], []
    for module, at_top in sorted(third_party_imports().items()):
        dists = {_distribution(d) for d in providers.get(module, [module])}
        if dists & runtime:
            continue
        (lazy_only if not at_top and dists & extras else undeclared).append(module)
    assert undeclared == []
    used = {_distribution(d) for m in third_party_imports() for d in providers.get(m, [m])}
    # every runtime dependency is imported by the package (protobuf aside: sentencepiece's model proto module,
    # which model.hf_tokenizer reads, needs its runtime; filelock: JAX's LRU compilation cache imports it)
    assert runtime - used - {"protobuf", "filelock"} == set()


# The first release of each that works beside the rest of the declared dependencies (every floor installed into
# one fresh environment and run, 2026-12-06): pip keeps an installed older one the range admits
WORKING_FLOORS = {
    "matplotlib": "3.8.4",  # 3.8.0-3.8.3 are built against numpy 1: their import fails under numpy 2
    # 2.3.x: merging a config file over rl.config's frozen dataclasses fails (its nodes are read-only)
    "omegaconf": "2.4",
    "pyarrow": "16",  # 15 is built against numpy 1: its import fails under numpy 2
    # 2.6: its protobuf code is too old for protobuf 7; 2.6.1: add_scalar raises TypeError under numpy 2
    "tensorboardX": "2.6.2.2",
}


def declared_floor(requirement: str) -> Version | None:
    """The highest `>=` bound of a requirement (None where it states none)."""
    floors = [Version(spec.version) for spec in Requirement(requirement).specifier if spec.operator == ">="]
    return max(floors, default=None)


@pytest.mark.parametrize("distribution", sorted(WORKING_FLOORS))
def test_a_runtime_dependency_floor_is_a_release_that_works_with_the_others(distribution):
    """`pip install r1jax` beside an older matplotlib, pyarrow or tensorboardX kept it (the range admitted it),
    and then every command that plots, reads Parquet or writes TensorBoard events (training) failed; beside
    omegaconf 2.3, every command that reads a config."""
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = [r for r in runtime if _distribution(r) == _distribution(distribution)]
    assert len(declared) == 1
    floor = declared_floor(declared[0])
    assert floor is not None and floor >= Version(WORKING_FLOORS[distribution]), declared[0]


# runtime dependencies left without an upper bound, each for a reason given beside it in pyproject.toml
UNCAPPED = {"pyarrow"}


def test_every_runtime_dependency_has_an_upper_bound_but_the_uncapped_ones():
    """A dependency's next major release may change what r1jax calls: each range stops below it (`<`), so a
    fresh install gets releases r1jax was tested with; pyarrow alone stays open (pyproject.toml says why)."""
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    open_ended = {_distribution(r) for r in runtime
                  if not any(spec.operator in ("<", "<=", "==", "~=") for spec in Requirement(r).specifier)}
    assert open_ended == {_distribution(d) for d in UNCAPPED}
