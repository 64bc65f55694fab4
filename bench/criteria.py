"""Accuracy vs sparsity of the engine's criteria and scopes on the digits CNN.

Protocol (the same for every method): scikit-learn's digits, a stratified
1297/500 split (`random_state=0`); Conv2D 32 -> Conv2D 64 -> MaxPool ->
Dense 128 -> Dense 10; Adam 1e-3, batch 32. The dense model trains 30 epochs;
a copy is then pruned from 0 to the target sparsity over 10 epochs
(`PolynomialDecay`, a mask update every 10 steps) and fine-tuned 15 epochs
with the masks fixed. Test accuracy after fine-tuning, mean over seeds.

Methods:
    layer      magnitude, every layer at the target (TFMOT's pruning)
    global     magnitude, one threshold over all layers
    lamp       LAMP scores, one threshold
    erk        magnitude, Erdős–Rényi-Kernel budgets
    taylor     |w * dL/dw| accumulated between updates, one threshold
    movement   -sum w * dL/dw, one threshold
    random     random scores, every layer at the target

Prints a table, writes `results/criteria.json` and `results/criteria.png`.

    python bench/criteria.py                      # the full study (JAX)
    python bench/criteria.py --quick              # 1 seed, 3 sparsities
"""

import argparse
import json
import os
import sys
import time

import _common

METHODS = {
    "layer": {"scope": "layer"},
    "global": {"scope": "global"},
    "lamp": {"scope": "lamp"},
    "erk": {"scope": "erk"},
    "taylor": {"scope": "global", "criterion": "taylor"},
    "movement": {"scope": "global", "criterion": "movement"},
    "random": {"scope": "layer", "criterion": "random"},
}
SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99]


def worker(config):
    """Runs every (seed, method, sparsity) on one backend; returns accuracies."""
    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import tfprune
    from tfprune.demo import build_cnn

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=500, random_state=0, stratify=y
    )
    batch = 32
    steps_per_epoch = -(-len(x_train) // batch)

    def compile_(model):
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )

    results = {"dense": {}, "pruned": {}}
    progress = keras.utils.Progbar(
        len(config["seeds"]) * (1 + len(config["methods"]) * len(config["sparsities"])),
        stateful_metrics=["run"],
    )
    for seed in config["seeds"]:
        keras.utils.set_random_seed(seed)
        dense = build_cnn()
        compile_(dense)
        dense.fit(x_train, y_train, epochs=config["dense_epochs"], batch_size=batch, verbose=0)
        dense_accuracy = float(dense.evaluate(x_test, y_test, verbose=0)[1])
        results["dense"][str(seed)] = dense_accuracy
        progress.add(1, [("run", 0)])
        for method in config["methods"]:
            for sparsity in config["sparsities"]:
                keras.utils.set_random_seed(seed)
                schedule = tfprune.PolynomialDecay(
                    0.0,
                    sparsity,
                    begin_step=0,
                    end_step=config["prune_epochs"] * steps_per_epoch,
                    frequency=10,
                )
                options = dict(METHODS[method])
                if options.get("criterion") == "random":
                    options["seed"] = seed
                pruned = tfprune.prune(dense, schedule, **options)
                compile_(pruned)
                start = time.perf_counter()
                pruned.fit(
                    x_train,
                    y_train,
                    epochs=config["prune_epochs"] + config["finetune_epochs"],
                    batch_size=batch,
                    verbose=0,
                    callbacks=[tfprune.UpdatePruningStep()],
                )
                seconds = time.perf_counter() - start
                accuracy = float(pruned.evaluate(x_test, y_test, verbose=0)[1])
                masks = [
                    keras.ops.convert_to_numpy(m)
                    for layer in pruned.layers
                    if isinstance(layer, tfprune.PruneLowMagnitude)
                    for _, m, _ in layer.pruning_vars
                ]
                achieved = 1.0 - sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
                results["pruned"].setdefault(method, {}).setdefault(str(sparsity), []).append(
                    {"seed": seed, "accuracy": accuracy, "sparsity": achieved, "seconds": seconds}
                )
                progress.add(1, [("run", accuracy)])
    return results


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, zoom in zip(axes, (False, True)):
        for method, points in summary["methods"].items():
            xs = [float(s) * 100 for s in points]
            ys = [100 * v["mean"] for v in points.values()]
            ax.plot(xs, ys, marker="o", label=method)
        ax.axhline(100 * summary["dense_mean"], color="grey", linestyle="--", label="dense")
        ax.set_xlabel("sparsity of the pruned weights (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_ylim(93, 99.5)
            ax.set_xlim(88, 99.5)
            ax.set_title("zoom: 90-99% sparsity")
        else:
            ax.set_title("Digits CNN: accuracy vs sparsity (mean over seeds)")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summarize(results):
    import statistics

    dense = list(results["dense"].values())
    summary = {"dense_mean": statistics.mean(dense), "methods": {}}
    for method, by_sparsity in results["pruned"].items():
        summary["methods"][method] = {
            s: {
                "mean": statistics.mean(r["accuracy"] for r in runs),
                "min": min(r["accuracy"] for r in runs),
                "max": max(r["accuracy"] for r in runs),
                "sparsity": statistics.mean(r["sparsity"] for r in runs),
            }
            for s, runs in by_sparsity.items()
        }
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    parser.add_argument("--quick", action="store_true", help="1 seed, sparsities 0.9, 0.95, 0.98")
    parser.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replot:
        with open(os.path.join(_common.RESULTS, "criteria.json")) as f:
            plot(json.load(f)["summary"], os.path.join(_common.RESULTS, "criteria.png"))
        return
    if args.worker:
        config = json.loads(args.worker)
        _common.write_worker_result(config, worker(config))
        return
    config = {
        "seeds": list(range(1 if args.quick else args.seeds)),
        "methods": args.methods.split(","),
        "sparsities": [0.9, 0.95, 0.98] if args.quick else [float(s) for s in args.sparsities.split(",")],
        "dense_epochs": 30,
        "prune_epochs": 10,
        "finetune_epochs": 15,
    }
    unknown = [m for m in config["methods"] if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    start = time.time()
    results = _common.run_worker(
        os.path.abspath(__file__), "criteria", args.backend, config, "tfprune",
        backend=args.backend, timeout=6 * 3600,
    )
    summary = summarize(results)
    sparsities = [str(s) for s in config["sparsities"]]
    rows = [
        [method] + [
            f"{100 * summary['methods'][method][s]['mean']:.2f}" if s in summary["methods"][method] else "-"
            for s in sparsities
        ]
        for method in config["methods"]
    ]
    print(f"\nDense: {100 * summary['dense_mean']:.2f}% (mean of {len(results['dense'])} seeds)")
    print(_common.table(["method"] + [f"{float(s):.0%}" for s in sparsities], rows))
    payload = {
        "config": config,
        "backend": args.backend,
        "results": results,
        "summary": summary,
        "seconds": time.time() - start,
        "machine": _common.machine_info(),
    }
    path = _common.save_results("criteria", payload)
    png = os.path.join(_common.RESULTS, "criteria.png")
    plot(summary, png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    sys.exit(main())
