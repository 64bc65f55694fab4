"""L0 gates on the digits CNN: accuracy vs channel sparsity, from scratch and fine-tuned.

The demo's CNN (conv 32, conv 64, dense 128) on scikit-learn's digits, in the
shape of the L0 study in `shared/seeds`: the dense model (20 epochs, Adam
1e-3); L0 gates (`tfprune.add_l0_gates`) trained from scratch
(`droprate_init=0.5`, 60 epochs); and L0 gates fine-tuned from the dense
model (`droprate_init=0.05`, gates starting open, 40 epochs), for several λ.
Gated models train with Adam 3e-3: `log_alpha` moves about one learning
rate per step, and a gate starting open needs a few thousand steps to close. Each gated model is thinned (`tfprune.thin`) and the
thinned model evaluated; channel sparsity is the fraction of closed gates.
Also measured side by side: steady-state seconds per epoch of gated vs plain
training (the seed's implementation was about 2x; target at most 1.3x).

Prints the table last, writes `results/l0.json`.

    python bench/l0.py                   # about 6 minutes on 2 CPU cores
    python bench/l0.py --quick           # a smoke run
"""

import argparse
import json
import os
import time

import _common


def _epoch_times(model, x, y, epochs):
    import keras

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    timer.times = []
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[timer])
    return timer.times


def worker(config):
    import keras
    import numpy as np

    import tfprune
    from tfprune import demo, l0

    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = demo.load_digits_split(0)
    epochs, tune = config["epochs"], config["tune_epochs"]
    rows = []

    def evaluate(kind, strength, model, times):
        demo._compile(model, 1e-3)
        accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
        gates = l0.gate_report(model)
        closed = sum(n - k for k, n in gates.values())
        total = sum(n for _, n in gates.values())
        row = {
            "model": kind, "l0_strength": strength, "accuracy": float(accuracy),
            "channel_sparsity": closed / total if total else 0.0,
            "epoch_seconds": _common.median(times[1:]) if len(times) > 1 else None,
            "first_epoch_seconds": times[0] if times else None,
        }  # fmt: skip
        if gates:
            small = tfprune.thin(model)
            demo._compile(small, 1e-3)
            row["thinned_accuracy"] = float(small.evaluate(x_test, y_test, verbose=0)[1])
            row["thinned_params"] = small.count_params()
            row["max_abs_difference"] = float(
                np.abs(model.predict(x_test, verbose=0) - small.predict(x_test, verbose=0)).max()
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    dense = demo.build_cnn()
    demo._compile(dense, 1e-3)
    evaluate("dense", None, dense, _epoch_times(dense, x_train, y_train, epochs))
    dense_params = dense.count_params()
    for strength in config["strengths"]:
        keras.utils.set_random_seed(0)
        scratch = tfprune.add_l0_gates(demo.build_cnn(), strength, droprate_init=0.5, seed=0)
        demo._compile(scratch, config["gated_lr"])
        evaluate("L0 from scratch", strength, scratch,
                 _epoch_times(scratch, x_train, y_train, config["scratch_epochs"]))  # fmt: skip
        keras.utils.set_random_seed(0)
        tuned = tfprune.add_l0_gates(dense, strength, droprate_init=0.05, seed=0)
        demo._compile(tuned, config["gated_lr"])
        evaluate("L0 fine-tuned", strength, tuned, _epoch_times(tuned, x_train, y_train, tune))
    # Time per epoch, side by side: plain and gated training of the same CNN.
    plain, gated = demo.build_cnn(), tfprune.add_l0_gates(demo.build_cnn(), 1e-3, seed=0)
    for model in (plain, gated):
        demo._compile(model, 1e-3)
    timing = {"plain": [], "gated": []}
    for _ in range(config["timing_rounds"]):
        for name, model in (("plain", plain), ("gated", gated)):
            timing[name] += _epoch_times(model, x_train, y_train, 2)[1:]
    result = {
        "rows": rows,
        "dense_params": dense_params,
        "epoch_seconds": {k: _common.median(v) for k, v in timing.items()},
        "versions": _common.versions("tfprune"),
    }
    result["epoch_ratio"] = result["epoch_seconds"]["gated"] / result["epoch_seconds"]["plain"]
    _common.write_worker_result(config, result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="tensorflow")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    config = {
        "epochs": 20,
        "scratch_epochs": 60,
        "tune_epochs": 40,
        "gated_lr": 3e-3,
        "strengths": [1e-3, 3e-3, 1e-2, 3e-2],
        "timing_rounds": 5,
    }
    if args.quick:
        config.update(epochs=2, scratch_epochs=2, tune_epochs=1, strengths=[1e-3], timing_rounds=1)
    print(f"L0 gates on the digits CNN ({args.backend})")
    result = _common.run_worker(
        os.path.abspath(__file__), "l0", args.backend, config, "tfprune", backend=args.backend
    )
    if "error" in result:
        raise SystemExit(1)
    _common.save_results("l0", dict(result, config=config))
    rows = [
        [r["model"], _common.fmt(r["l0_strength"], "g"), _common.fmt(100 * r["accuracy"], ".2f"),
         _common.fmt(100 * r["channel_sparsity"], ".1f"),
         _common.fmt(100 * r["thinned_accuracy"], ".2f") if "thinned_accuracy" in r else "-",
         r.get("thinned_params", result["dense_params"])]
        for r in result["rows"]
    ]  # fmt: skip
    print()
    print(_common.table(
        ["model", "lambda", "accuracy %", "channels closed %", "thinned accuracy %", "params"], rows
    ))  # fmt: skip
    s = result["epoch_seconds"]
    print(
        f"\nSeconds per epoch (median, steady state): plain {s['plain']:.3f}, gated "
        f"{s['gated']:.3f}: x{result['epoch_ratio']:.2f} (target <= 1.3)"
    )


if __name__ == "__main__":
    main()
