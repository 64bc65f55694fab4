"""Schedules outside Keras: a plain PyTorch training loop pruned by tfprune.

The schedule decides when and how much (`schedule(step)`), `tfprune.masking`
decides which weights; the loop owns its masks. Run with the PyTorch backend
so the schedule returns torch tensors:

    KERAS_BACKEND=torch python examples/torch_loop.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch  # noqa: E402

import tfprune  # noqa: E402
from tfprune import masking  # noqa: E402


def main(steps=200, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(512, 32)
    y = (x[:, :4].sum(dim=1, keepdim=True) > 0).float()
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    weights = [model[0].weight, model[2].weight]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = tfprune.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=150, frequency=10)

    for step in range(1, steps + 1):
        should_prune, sparsity = schedule(step)
        if bool(should_prune):
            with torch.no_grad():
                for i, w in enumerate(weights):
                    scores = (w * masks[i]).abs()
                    masks[i] = masking.Unstructured()(scores, sparsity)[0]
        batch = torch.randint(0, 512, (64,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # keep pruned weights at zero after each update
            for w, m in zip(weights, masks):
                w.mul_(m)

    accuracy = ((model(x) > 0).float() == y).float().mean().item()
    sparsities = [float((w == 0).float().mean()) for w in weights]
    print(f"accuracy {accuracy:.3f}, sparsity per layer {[round(s, 4) for s in sparsities]}")
    return accuracy, sparsities


if __name__ == "__main__":
    main()
