"""tfprune: pruning for Keras 3 (TensorFlow, JAX, PyTorch)."""

import pathlib

from setuptools import find_packages, setup

README = pathlib.Path(__file__).with_name("README.md")

TENSORBOARD = "tensorboard>=2.16"  # TF >= 2.21 no longer installs it

setup(
    name="tfprune",
    version="0.1.0",
    description="Pruning for Keras 3: the TFMOT pruning API on TensorFlow, JAX and PyTorch.",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfprune", "tfprune.*"]),
    python_requires=">=3.10",
    install_requires=["keras>=3.0", "numpy", "absl-py", "pyyaml"],
    extras_require={
        # Pick one of the two TensorFlow builds; never install both.
        "tensorflow": ["tensorflow>=2.16", TENSORBOARD],
        "tensorflow-cpu": ["tensorflow-cpu>=2.16", TENSORBOARD],
        "jax": ["jax"],
        "demo": ["scikit-learn"],
        "plots": ["matplotlib"],
        "lint": ["ruff"],  # `make lint`
        "test": [
            "pytest",
            "pytest-xdist",
            "scikit-learn",
            "nbformat",
            "nbclient",
            "ipykernel",
            "matplotlib",  # the notebooks and the CLI's plots
            # TFMOT oracle (installed with --no-deps by the Makefile) needs these
            "dm-tree",
            "scipy",
            "mock",
            "optax",  # JAX example of schedules outside Keras
            # KerasHub (installed with --no-deps by the Makefile: its
            # tensorflow-text dependency would pull the full `tensorflow`
            # beside tensorflow-cpu) needs these to build backbones.
            "regex",
            "tokenizers",
        ],
    },
    entry_points={"console_scripts": ["tfprune=tfprune.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
