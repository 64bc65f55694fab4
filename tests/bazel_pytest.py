"""The `main` of every `py_test` in BUILD: pytest on the paths given as arguments.

`bazel test` starts it in the test's runfiles tree, a copy of the declared
files of the repository (symbolic links). From there pytest finds the same
configuration (`pyproject.toml`) and `tests/conftest.py` as `make test`, and
imports only what BUILD declares. The backend is TensorFlow unless the
environment says otherwise: `bazel test --test_env=KERAS_BACKEND=jax //...`.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(paths):
    # Python puts this script's resolved directory (in the source tree) first
    # on sys.path; drop it, so that undeclared files cannot be imported.
    if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
        del sys.path[0]
    sys.dont_write_bytecode = True  # nothing written into the runfiles tree
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    args = ["-q", "-c", os.path.join(ROOT, "pyproject.toml"), "--rootdir", ROOT]
    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:  # under `bazel test`: the test's own directories, not the user's
        os.environ.setdefault("HOME", tmp)
        args.append("--basetemp=" + os.path.join(tmp, "pytest"))
    if os.environ.get("XML_OUTPUT_FILE"):  # per-case results for Bazel
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    os.chdir(ROOT)
    import pytest

    return pytest.main(args + paths)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
