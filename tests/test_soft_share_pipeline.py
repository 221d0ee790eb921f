"""The soft weight-sharing pipeline on digits (quick setting): retrain, quantise, count bits."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

pytest.importorskip("flax")
pytest.importorskip("sklearn")

from optreg.demo.data import load_digits_split  # noqa: E402
from optreg.demo.soft_share import run_soft_share  # noqa: E402
from optreg.demo.training import train  # noqa: E402


@pytest.fixture(scope="module")
def result():
    data = load_digits_split(0)
    baseline = train(optax.adam(1e-3), data, epochs=15)
    epochs = []
    out = run_soft_share(data, baseline.params, quick=True, on_epoch=lambda epoch, metrics: epochs.append(epoch))
    return out, epochs


def test_quick_pipeline_compresses_and_stays_accurate(result):
    out, epochs = result
    assert epochs == list(range(len(epochs))) and epochs
    # honest lower bounds for the quick setting (the full default run is reported in the README)
    assert out.report.compression_rate > 20.0
    assert out.quantized_accuracy > 0.85
    assert out.baseline_accuracy > 0.9
    assert out.report.nonzero_fraction < 0.2


def test_quantized_values_are_the_codebook(result):
    out, _ = result
    values = np.unique(np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(out.quantized.params)]))
    assert set(values.tolist()) <= set(out.quantized.codebook.tolist())
    assert 0.0 in values
    assert out.report.distinct_values == values.size
    np.testing.assert_array_equal(out.weights_quantized, np.concatenate(
        [np.asarray(leaf).ravel() for leaf in jax.tree.leaves(out.quantized.params)]))
    assert out.weights_before.shape == out.weights_after.shape == out.weights_quantized.shape
    assert out.state.means.shape == out.initial_state.means.shape == (17,)
