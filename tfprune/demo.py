"""The demo: prune a small CNN on scikit-learn's digits to 90% with AGP.

Trains a dense CNN, prunes a copy with `AGP(final_sparsity=0.9)` while
fine-tuning, strips the wrappers and prints per-layer sparsity, test accuracy
and model size (raw and gzip), dense vs pruned.

Run: `python -m tfprune demo` (or `make demo`).
"""

import gzip
import io
import time

import keras
import numpy as np

import tfprune


def load_digits_split(seed=0):
    """8x8 digit images in [0, 1], split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def build_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="dense1"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_cnn",
    )


def _compile(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def model_size(model):
    """(raw bytes, gzip bytes) of the model's weights saved with `np.savez`.

    Only the model's own weights count (no optimizer state), so dense and
    pruned models are compared like for like.
    """
    buffer = io.BytesIO()
    np.savez(buffer, *[keras.ops.convert_to_numpy(w) for w in model.weights])
    raw = buffer.getvalue()
    return len(raw), len(gzip.compress(raw, compresslevel=9))


def run(epochs=20, prune_epochs=20, batch_size=32, final_sparsity=0.9, seed=0, verbose=0):
    """Runs the demo and returns its measurements as a dict."""
    for name, value in (("epochs", epochs), ("prune_epochs", prune_epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Argument `{name}` must be a positive integer. Received: {name}={value!r}")
    keras.utils.set_random_seed(seed)
    x_train, x_test, y_train, y_test = load_digits_split(seed)
    steps_per_epoch = int(np.ceil(len(x_train) / batch_size))
    end_step = steps_per_epoch * max(1, prune_epochs - 5)  # last epochs recover
    schedule = tfprune.AGP(  # checks final_sparsity before any training
        final_sparsity, begin_step=0, end_step=end_step, frequency=max(steps_per_epoch // 2, 1)
    )
    dense = build_cnn()
    _compile(dense, 1e-3)
    dense.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=verbose)
    dense_acc = dense.evaluate(x_test, y_test, verbose=0)[1]

    pruned = tfprune.prune_low_magnitude(dense, pruning_schedule=schedule)
    _compile(pruned, 5e-4)
    pruned.fit(
        x_train,
        y_train,
        epochs=prune_epochs,
        batch_size=batch_size,
        verbose=verbose,
        callbacks=[tfprune.UpdatePruningStep()],
    )
    stripped = tfprune.strip_pruning(pruned)
    _compile(stripped, 5e-4)
    pruned_acc = stripped.evaluate(x_test, y_test, verbose=0)[1]

    layers = []
    for layer in stripped.layers:
        for weight in layer.weights:
            if weight.name in ("kernel",):
                value = keras.ops.convert_to_numpy(weight)
                layers.append((f"{layer.name}/{weight.name}", value.size, float(np.mean(value == 0))))
    return {
        "layers": layers,
        "dense_accuracy": float(dense_acc),
        "pruned_accuracy": float(pruned_acc),
        "dense_size": model_size(dense),
        "pruned_size": model_size(stripped),
        "final_sparsity": final_sparsity,
    }


def format_report(result):
    lines = [
        f"tfprune demo: digits CNN pruned with AGP to {result['final_sparsity']:.0%} "
        f"sparsity (Keras {keras.__version__}, backend {keras.backend.backend()})",
        "",
        f"{'layer':<20}{'weights':>10}{'sparsity':>10}",
    ]
    for name, size, sparsity in result["layers"]:
        lines.append(f"{name:<20}{size:>10}{sparsity:>10.2%}")
    dense_raw, dense_gz = result["dense_size"]
    pruned_raw, pruned_gz = result["pruned_size"]
    lines += [
        "",
        f"{'':<20}{'dense':>12}{'pruned':>12}",
        f"{'test accuracy':<20}{result['dense_accuracy']:>12.2%}{result['pruned_accuracy']:>12.2%}",
        f"{'weights raw (bytes)':<20}{dense_raw:>12,}{pruned_raw:>12,}",
        f"{'weights gzip (bytes)':<20}{dense_gz:>12,}{pruned_gz:>12,}",
        f"{'gzip ratio':<20}{'':>12}{dense_gz / pruned_gz:>11.2f}x",
    ]
    return "\n".join(lines)


def main(epochs=20, prune_epochs=20, final_sparsity=0.9):
    start = time.perf_counter()
    result = run(epochs=epochs, prune_epochs=prune_epochs, final_sparsity=final_sparsity)
    print(format_report(result))
    print(f"\n(finished in {time.perf_counter() - start:.0f} s)")
    return result
