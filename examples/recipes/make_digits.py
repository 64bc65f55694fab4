"""Writes a trained digits CNN and its data for the recipes in this folder.

    python examples/recipes/make_digits.py            # digits_cnn.keras, digits.npz
    tfprune prune digits_cnn.keras --data digits.npz \\
        --recipe examples/recipes/agp_90.yaml --out pruned.keras
"""

import argparse

import keras
import numpy as np

from tfprune import demo


def main(out_dir=".", epochs=5):
    x_train, x_test, y_train, y_test = demo.load_digits_split()
    keras.utils.set_random_seed(0)
    model = demo.build_cnn()
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    model.save(f"{out_dir}/digits_cnn.keras")
    np.savez(f"{out_dir}/digits.npz", x=x_train, y=y_train, x_val=x_test, y_val=y_test)
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    main(args.out_dir, args.epochs)
