"""BUILD (Bazel) declares every module and test file, and only existing files.

BUILD is Starlark, a subset of Python's syntax: `ast` reads its rule calls
without Bazel. Its lists are explicit, so a new module or test file must be
added there, and a test that imports another file of tests/ must declare it;
these tests name what is missing. Under `bazel test` the test file is a link
into the source tree, which is what is compared.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """No Keras here: conftest's seeding (seconds on JAX's first call) is skipped."""


def _rules():
    """{name: (kind, {attribute: value})} of the rule calls in BUILD."""
    tree = ast.parse((ROOT / "BUILD").read_text(encoding="utf-8"), filename="BUILD")
    rules = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            call = node.value
            attrs = {}
            for kw in call.keywords:
                try:
                    attrs[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:  # an expression; no file list here
                    attrs[kw.arg] = None
            if "name" in attrs:  # a rule, not load() or package()
                rules[attrs["name"]] = (call.func.id, attrs)
    return rules


def _on_disk(pattern):
    return {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern)}


def _files(attrs, *keys):
    """The file paths (not target labels) in the given attributes of a rule."""
    values = [attrs.get(key) or [] for key in keys]
    paths = [v for value in values for v in ([value] if isinstance(value, str) else value)]
    return {p for p in paths if not p.startswith((":", "//", "@"))}


def test_the_library_declares_every_module():
    kind, attrs = _rules()["tfprune"]
    assert kind == "py_library"
    srcs = _files(attrs, "srcs")
    modules = _on_disk("tfprune/**/*.py")
    assert not modules - srcs, f"modules missing from srcs of //:tfprune: {sorted(modules - srcs)}"


def test_every_test_file_has_its_py_test():
    rules = _rules()
    missing = []
    for path in sorted(_on_disk("tests/test_*.py")):
        kind, attrs = rules.get(Path(path).stem, (None, {}))
        if kind != "py_test" or path not in _files(attrs, "srcs") or attrs.get("args") != [path]:
            missing.append(path)
    assert not missing, f"test files without their py_test (name = file stem): {missing}"


def test_every_test_helper_is_declared():
    declared = set().union(*(_files(attrs, "srcs") for _, attrs in _rules().values()))
    helpers = _on_disk("tests/*.py") - _on_disk("tests/test_*.py")
    assert not helpers - declared, f"files of tests/ in no rule: {sorted(helpers - declared)}"


def _provided(rules, name):
    """The files of a rule and of the rules it depends on in BUILD."""
    _, attrs = rules[name]
    files = _files(attrs, "srcs")
    for dep in attrs.get("deps") or []:
        if dep.startswith(":"):
            files |= _provided(rules, dep[1:])
    return files


def _imported(path):
    """The top-level names of the modules that a file imports."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_of_tests_that_a_test_imports_is_in_its_runfiles():
    rules = _rules()
    local = {Path(p).stem for p in _on_disk("tests/*.py")}
    missing = []
    for name, (kind, attrs) in sorted(rules.items()):
        if kind != "py_test":
            continue
        provided = {Path(p).stem for p in _provided(rules, name) if p.startswith("tests/")}
        for path in sorted(_files(attrs, "srcs")):
            for module in sorted((_imported(path) & local) - provided):
                missing.append(f"{name}: {path} imports tests/{module}.py")
    assert not missing, f"imports that the py_test does not declare: {missing}"


def test_every_declared_file_exists():
    missing = {
        f"{name}: {path}"
        for name, (_, attrs) in _rules().items()
        for path in _files(attrs, "srcs", "data", "main")
        if not (ROOT / path).is_file()
    }
    assert not missing, f"declared in BUILD but not on disk: {sorted(missing)}"
