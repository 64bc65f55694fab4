"""One-shot pruning: held-out perplexity of a small language model, and the digits CNN.

Language model: a KerasHub `GPT2Backbone` from a small config (byte tokens,
2 layers, hidden 128, 4 heads, feed-forward 512, 128-token windows) with the
output layer tied to the token embedding, trained from scratch for
`--train-steps` steps (Adam 1e-3, batch 32) on the Python standard library's
own source files (bytes; files split into training and held-out sets by name).
It is then pruned in one shot from 64 training windows, by magnitude, Wanda
and SparseGPT, at 50% and at 2:4, and recovered for `--recover-steps` steps
with its zeros held (`tfprune.hold_sparsity`) while distilling from the dense
model (`tfprune.distill`). Reported: held-out perplexity before and after
recovery, beside the dense model trained for as many more steps (the model is
small and under-trained, so any extra step helps it), one-shot time per
pruned layer, and the process's peak memory.

Digits: the demo's CNN trained 20 epochs, pruned in one shot from 256
training images; test accuracy at 50%, 70% and 2:4.

Expected shape, as published for large models: SparseGPT ~ Wanda << magnitude,
and 2:4 worse than 50% unstructured. Prints tables, writes
`results/oneshot.json` and `results/oneshot.png`.

    python bench/oneshot.py              # about 10 minutes on 2 CPU cores (JAX)
    python bench/oneshot.py --quick      # a smoke run
"""

import argparse
import glob
import json
import os
import resource
import sys
import sysconfig
import time

import _common

SEQUENCE = 128
METHODS = ("magnitude", "wanda", "sparsegpt")


def load_text(limit_train, limit_test):
    """Bytes of the standard library's .py files: training and held-out sets."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    train, test = bytearray(), bytearray()
    for index, path in enumerate(files):
        target = test if index % 10 == 0 else train  # every 10th file is held out
        if len(target) >= (limit_test if target is test else limit_train):
            continue
        with open(path, "rb") as f:
            target.extend(f.read())
    return bytes(train[:limit_train]), bytes(test[:limit_test])


def windows(data, np, count=None, seed=0):
    array = np.frombuffer(data, dtype=np.uint8).astype("int32")
    n = (len(array) - 1) // SEQUENCE
    starts = np.arange(n) * SEQUENCE
    if count is not None:
        starts = np.random.default_rng(seed).choice(starts, size=min(count, n), replace=False)
    x = np.stack([array[s : s + SEQUENCE] for s in starts])
    y = np.stack([array[s + 1 : s + SEQUENCE + 1] for s in starts])
    return x, y


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(config):
    import keras
    import keras_hub
    import numpy as np

    import tfprune
    from tfprune.demo import build_cnn, load_digits_split

    keras.utils.set_random_seed(0)
    train_bytes, test_bytes = load_text(config["train_bytes"], config["test_bytes"])
    x_train, y_train = windows(train_bytes, np)
    x_test, y_test = windows(test_bytes, np, count=config["test_windows"])
    ones = np.ones_like

    def inputs(x):
        return {"token_ids": x, "padding_mask": ones(x)}

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=256, num_layers=2, num_heads=4, hidden_dim=128, intermediate_dim=512,
        max_sequence_length=SEQUENCE, dropout=0.0,
    )  # fmt: skip
    model_inputs = {
        name: keras.Input((SEQUENCE,), dtype="int32", name=name) for name in ("token_ids", "padding_mask")
    }
    hidden = backbone(model_inputs)
    logits = backbone.token_embedding(hidden, reverse=True)
    lm = keras.Model(model_inputs, logits, name="byte_lm")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    lm.compile(keras.optimizers.Adam(1e-3), loss)
    steps = config["train_steps"]
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x_train))
    batch = 32
    for epoch_start in range(0, steps * batch, len(order)):
        take = order[: min(len(order), steps * batch - epoch_start)]
        lm.fit(inputs(x_train[take]), y_train[take], batch_size=batch, epochs=1, verbose=0)
    train_seconds = time.perf_counter() - start

    def perplexity(model):
        model.compile(loss=loss)
        return float(np.exp(model.evaluate(inputs(x_test), y_test, batch_size=32, verbose=0)))

    calibration = inputs(x_train[rng.choice(len(x_train), config["calibration"], replace=False)])
    results = {
        "dense_perplexity": perplexity(lm),
        "train_seconds": train_seconds,
        "train_windows": int(len(x_train)),
        "test_windows": int(len(x_test)),
        "lm": {},
    }
    # The same number of extra steps for the dense model: recovery also trains
    # an under-trained model further, so this is what it is compared with.
    from tfprune import cloning

    continued = cloning.copy_model(lm, lambda copy, layer: copy)
    continued.compile(keras.optimizers.Adam(3e-4), loss)
    take = rng.choice(len(x_train), config["recover_steps"] * batch, replace=False)
    continued.fit(inputs(x_train[take]), y_train[take], batch_size=batch, epochs=1, verbose=0)
    results["dense_continued_perplexity"] = perplexity(continued)
    layers = sum(
        1
        for layer in lm._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
    )
    for pattern in ("50%", "2:4"):
        for method in METHODS:
            options = {"sparsity": 0.5} if pattern == "50%" else {"sparsity_m_by_n": (2, 4)}
            before_mb = peak_mb()
            start = time.perf_counter()
            pruned = tfprune.oneshot(lm, calibration, method=method, verbose=0, **options)
            seconds = time.perf_counter() - start
            entry = {
                "perplexity": perplexity(pruned),
                "seconds": seconds,
                "seconds_per_layer": seconds / layers,
                "peak_mb": peak_mb(),
                "peak_mb_before": before_mb,
            }
            student = tfprune.hold_sparsity(pruned)
            distiller = tfprune.distill(student, lm, temperature=2.0, alpha=0.5)
            distiller.compile(keras.optimizers.Adam(3e-4), loss)
            take = rng.choice(len(x_train), config["recover_steps"] * batch, replace=False)
            distiller.fit(
                inputs(x_train[take]), y_train[take], batch_size=batch, epochs=1, verbose=0,
                callbacks=[tfprune.UpdatePruningStep()],
            )  # fmt: skip
            entry["recovered_perplexity"] = perplexity(tfprune.strip_pruning(student))
            results["lm"][f"{method} {pattern}"] = entry
            print(f"{method} {pattern}: {entry}", flush=True)

    # the digits CNN
    xd_train, xd_test, yd_train, yd_test = load_digits_split(0)
    keras.utils.set_random_seed(0)
    cnn = build_cnn()
    cnn.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    cnn.fit(xd_train, yd_train, epochs=config["digits_epochs"], batch_size=32, verbose=0)

    def accuracy(model):
        model.compile(loss=loss, metrics=["accuracy"])
        return float(model.evaluate(xd_test, yd_test, verbose=0)[1])

    results["digits"] = {"dense": accuracy(cnn)}
    for pattern, options in (("50%", {"sparsity": 0.5}), ("70%", {"sparsity": 0.7}),
                             ("2:4", {"sparsity_m_by_n": (2, 4)})):  # fmt: skip
        for method in METHODS:
            pruned = tfprune.oneshot(cnn, xd_train[:256], method=method, verbose=0, **options)
            results["digits"][f"{method} {pattern}"] = accuracy(pruned)
    results["versions"] = {"keras": keras.__version__, "keras_hub": keras_hub.__version__}
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lm = results["lm"]
    names = list(lm)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [lm[n]["perplexity"] for n in names], width=0.4, label="one-shot")
    ax.bar([x + 0.2 for x in xs], [lm[n]["recovered_perplexity"] for n in names], width=0.4,
           label="after recovery")  # fmt: skip
    ax.axhline(results["dense_perplexity"], color="grey", linestyle="--", label="dense")
    ax.axhline(results["dense_continued_perplexity"], color="black", linestyle=":",
               label="dense, trained as long as the recovery")  # fmt: skip
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity (bytes)")
    ax.set_title("Byte-level GPT-2 on the standard library: one-shot pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--recover-steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        config = json.loads(args.worker)
        _common.write_worker_result(config, worker(config))
        return
    config = {
        "train_steps": 20 if args.quick else args.train_steps,
        "recover_steps": 5 if args.quick else args.recover_steps,
        "train_bytes": 400_000 if args.quick else 3_000_000,
        "test_bytes": 100_000 if args.quick else 300_000,
        "test_windows": 64 if args.quick else 512,
        "calibration": 16 if args.quick else 64,
        "digits_epochs": 2 if args.quick else 20,
    }
    results = _common.run_worker(
        os.path.abspath(__file__), "oneshot", args.backend, config, "tfprune",
        backend=args.backend, timeout=3 * 3600,
    )  # fmt: skip
    if "error" in results:
        sys.exit(1)
    print(f"\nByte-level LM: dense held-out perplexity {results['dense_perplexity']:.2f} "
          f"(trained {config['train_steps']} steps in {results['train_seconds']:.0f} s); "
          f"{results['dense_continued_perplexity']:.2f} after the recovery's "
          f"{config['recover_steps']} steps of plain training")  # fmt: skip
    rows = [
        [name, f"{e['perplexity']:.2f}", f"{e['recovered_perplexity']:.2f}",
         f"{e['seconds_per_layer']:.2f}", f"{e['peak_mb']:.0f}"]
        for name, e in results["lm"].items()
    ]  # fmt: skip
    print(_common.table(["method", "perplexity", "after recovery", "s / layer", "peak MB"], rows))
    digits = results["digits"]
    print(f"\nDigits CNN: dense accuracy {100 * digits['dense']:.2f}%")
    rows = [
        [m] + [f"{100 * digits[f'{m} {p}']:.2f}" for p in ("50%", "70%", "2:4")] for m in METHODS
    ]
    print(_common.table(["method", "50%", "70%", "2:4"], rows))
    path = _common.save_results("oneshot", {"config": config, "backend": args.backend, **results})
    png = os.path.join(_common.RESULTS, "oneshot.png")
    plot(results, png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    sys.exit(main())
