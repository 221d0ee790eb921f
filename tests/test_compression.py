"""quantize / compression_report: Ullrich's merging and snapping, Han et al.'s storage count."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

import optreg
from optreg.compression import _symmetric_kl, huffman_bits, merge_components
from optreg.soft_share import MixtureState


def mixture_state(means, stds, proportions) -> MixtureState:
    proportions = np.asarray(proportions, np.float64)
    return MixtureState(
        jnp.zeros([], jnp.int32),
        jnp.asarray(means, jnp.float32),
        jnp.asarray(-2 * np.log(stds), jnp.float32),
        jnp.asarray(np.log(proportions / proportions.sum()), jnp.float32),
        None,
    )


def test_symmetric_kl_matches_numerical_integration():
    for (ma, sa, mb, sb) in [(0.0, 1.0, 0.5, 2.0), (0.1, 0.02, 0.12, 0.03)]:
        def kl(m1, s1, m2, s2):
            f = lambda x: norm.pdf(x, m1, s1) * (norm.logpdf(x, m1, s1) - norm.logpdf(x, m2, s2))  # noqa: E731
            return integrate.quad(f, m1 - 12 * s1, m1 + 12 * s1)[0]

        expected = 0.5 * (kl(ma, sa, mb, sb) + kl(mb, sb, ma, sa))
        assert math.isclose(_symmetric_kl(ma, sa**2, mb, sb**2), expected, rel_tol=1e-6)


def test_merging_joins_close_components_only():
    state = mixture_state([0.0, 0.3, 0.301, 0.9, 0.002], [0.02, 0.02, 0.02, 0.02, 0.02], [0.9, 0.02, 0.06, 0.01, 0.01])
    # equal variances: symmetrised KL = Δμ² / (2σ²): 1.25e-3 for 0.3 vs 0.301, 5e-3 for 0 vs 0.002
    means, variances, proportions = merge_components(state, kl_threshold=4e-3)
    assert len(means) == 4
    np.testing.assert_allclose(sorted(means), sorted([0.0, (0.02 * 0.3 + 0.06 * 0.301) / 0.08, 0.9, 0.002]),
                               rtol=1e-5)
    np.testing.assert_allclose(proportions.sum(), 1.0)
    means, _, proportions = merge_components(state, kl_threshold=6e-3)
    assert len(means) == 3 and means[0] == 0.0  # the zero component absorbed 0.002 and kept μ = 0
    np.testing.assert_allclose(proportions[0], 0.91, rtol=1e-5)
    assert len(merge_components(state, kl_threshold=0.0)[0]) == 5


def test_quantize_snaps_to_the_most_responsible_mean_and_zeros_exactly():
    state = mixture_state([0.0, -0.5, 0.5, 0.25], [0.05, 0.05, 0.05, 0.01], [0.97, 0.01, 0.01, 0.01])
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.7, 0.7, 2000).astype(np.float32)
    params = {"kernel": jnp.asarray(w.reshape(40, 50)), "bias": jnp.asarray(w[:7]), "step": jnp.array(3)}
    q = optreg.quantize(params, state, kl_threshold=0.0, mask={"kernel": True, "bias": False, "step": False})
    # brute force argmax responsibility with scipy
    means, stds, pis = np.array([0.0, -0.5, 0.5, 0.25]), np.array([0.05, 0.05, 0.05, 0.01]), [0.97, 0.01, 0.01, 0.01]
    score = np.log(pis) + norm.logpdf(w[:, None].astype(np.float64), means, stds)
    expected = means[np.argmax(score, axis=1)].reshape(40, 50)
    np.testing.assert_allclose(q.params["kernel"], expected, rtol=1e-6)
    assert set(np.unique(np.asarray(q.params["kernel"]))) <= set(np.float32(q.codebook))
    assert np.sum(np.asarray(q.params["kernel"]) == 0.0) == np.sum(expected == 0.0) > 0
    np.testing.assert_array_equal(q.params["bias"], w[:7])
    assert int(q.params["step"]) == 3


def test_quantize_keeps_bfloat16():
    state = mixture_state([0.0, -0.5, 0.5], [0.05, 0.05, 0.05], [0.9, 0.05, 0.05])
    params = {"w": jnp.asarray([0.01, -0.45, 0.6], jnp.bfloat16)}
    q = optreg.quantize(params, state)
    assert q.params["w"].dtype == jnp.bfloat16
    expected = np.asarray(jnp.asarray([0.0, -0.5, 0.5], jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(np.asarray(q.params["w"], np.float32), expected)


def test_huffman_bits_on_the_textbook_example():
    # Cormen et al., Introduction to Algorithms, §16.3: frequencies 45, 13, 12, 16, 9, 5 → 224 bits
    assert huffman_bits(np.array([45, 13, 12, 16, 9, 5])) == 224
    assert huffman_bits(np.array([7])) == 7
    assert huffman_bits(np.array([])) == 0


def test_report_counts_bits_as_han_et_al():
    a, b, c = 0.25, -0.5, 0.75
    dense = np.zeros((1, 100), np.float32)
    dense[0, [0, 5, 50, 99]] = [a, b, a, c]
    # gaps (from position −1): 1, 5, 45, 49; 5-bit gaps reach 32 → 45 and 49 need one filler each
    entries, symbols = 6, 4  # a, b, c and the filler zero → 2-bit fixed indices
    fixed = entries * (5 + 2) + 3 * 32
    huffman = entries * 5 + 12 + 3 * 32  # counts (a: 2, fill: 2, b: 1, c: 1) → code lengths 2, 2, 2, 2
    conv = np.zeros((3, 3, 2, 2), np.float32)
    conv.ravel()[[3, 30]] = [a, a]  # gaps 4, 27 ≤ 256: no fillers; one symbol → 1-bit index; 8-bit gaps
    conv_bits = 2 * (8 + 1) + 32
    params = {"dense": jnp.asarray(dense), "conv": jnp.asarray(conv), "bias": jnp.ones(10)}
    report = optreg.compression_report(params, mask={"dense": True, "conv": True, "bias": False})
    by_path = {layer.path: layer for layer in report.layers}
    assert by_path["dense"].fillers == 2 and by_path["dense"].index_bits == 2 and symbols == 4
    assert by_path["dense"].bits == fixed and by_path["dense"].bits_huffman == huffman
    assert by_path["conv"].bits == conv_bits and by_path["conv"].gap_bits == 8
    assert by_path["bias"].bits == 32 * 10
    assert report.bits == fixed + conv_bits + 320
    assert report.size == 100 + 36 + 10 and report.nonzero == 4 + 2 + 10
    assert math.isclose(report.compression_rate, 32 * 146 / report.bits)
    assert math.isclose(report.compression_rate_huffman, 32 * 146 / report.bits_huffman)
    assert report.distinct_values == 4  # 0, a, b, c over the quantised leaves
    assert "compression rate" in report.table()


def test_report_from_state_quantizes_first():
    state = mixture_state([0.0, -0.5, 0.5], [0.05, 0.05, 0.05], [0.9, 0.05, 0.05])
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.uniform(-0.6, 0.6, (30, 30)), jnp.float32)}
    from_state = optreg.compression_report(params, state)
    q = optreg.quantize(params, state)
    from_quantized = optreg.compression_report(params, q)
    assert from_state == from_quantized
    assert from_state.distinct_values <= 3
    raw = optreg.compression_report(params)
    assert raw.compression_rate < from_state.compression_rate
    with pytest.raises(TypeError):
        optreg.compression_report(params, {"not": "a state"})
    with pytest.raises(ValueError):
        optreg.compression_report(params, state, dense_gap_bits=0)


def test_pipeline_objects_are_jax_friendly():
    state = mixture_state([0.0, 0.5], [0.05, 0.05], [0.9, 0.1])
    q = optreg.quantize({"w": jnp.linspace(-1, 1, 11)}, state)
    assert isinstance(q.mixture, MixtureState)
    assert jax.tree.leaves(q.params)[0].shape == (11,)
