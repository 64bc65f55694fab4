import pytest
from conftest import only_backends

from tfprune import __main__ as cli
from tfprune import demo


@only_backends("tensorflow", reason="`make demo` runs on TensorFlow")
def test_demo_reports_sparsity_accuracy_and_size():
    pytest.importorskip("sklearn")
    result = demo.run(epochs=2, prune_epochs=3, final_sparsity=0.9)
    names = [name for name, _, _ in result["layers"]]
    assert names == ["conv1/kernel", "conv2/kernel", "dense1/kernel", "logits/kernel"]
    for _, size, sparsity in result["layers"]:
        kept = round(size * 0.1)
        assert sparsity == pytest.approx(1 - max(kept, 1) / size)
    assert result["pruned_size"][1] < result["dense_size"][1] / 3
    report = demo.format_report(result)
    assert "test accuracy" in report and "weights gzip" in report


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "demo" in capsys.readouterr().out
