"""quantize / compression_report: Ullrich et al.'s merging and snapping, Han et al.'s storage count."""

from __future__ import annotations

import math
import struct
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

import optreg
from optreg import MixtureState
from optreg._compression import _separation, _snap_leaf, merge_components
from optreg._storage import _huffman_bits


def mixture_state(means, stds, proportions) -> MixtureState:
    proportions = np.asarray(proportions, np.float64)
    return MixtureState(
        jnp.zeros([], jnp.int32),
        jnp.asarray(means, jnp.float32),
        jnp.asarray(-2 * np.log(stds), jnp.float32),
        jnp.asarray(np.log(proportions / proportions.sum()), jnp.float32),
        None,
    )


def test_separation_is_the_kl_between_the_means_at_the_narrower_width():
    def kl(m1, s1, m2, s2):
        f = lambda x: norm.pdf(x, m1, s1) * (norm.logpdf(x, m1, s1) - norm.logpdf(x, m2, s2))  # noqa: E731
        return integrate.quad(f, m1 - 12 * s1, m1 + 12 * s1)[0]

    for (ma, sa, mb, sb) in [(0.0, 1.0, 0.5, 2.0), (0.1, 0.02, 0.12, 0.03), (0.246, 0.0159, 0.2462, 0.0069)]:
        narrow = min(sa, sb)
        expected = kl(ma, narrow, mb, narrow)
        assert math.isclose(_separation(ma, sa**2, mb, sb**2), expected, rel_tol=1e-6, abs_tol=1e-12)
        assert _separation(ma, sa**2, mb, sb**2) == _separation(mb, sb**2, ma, sa**2)


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


def test_merging_joins_near_duplicate_means_of_different_widths():
    # what a short retraining leaves: three components on ~0.246 whose widths differ (their full KL divergence
    # is ~0.4-0.9, far above any "same component" threshold), next to distinct levels
    means = [0.0, 0.2460, 0.2458, 0.2462, 0.35, -0.2146]
    stds = [0.002, 0.0159, 0.0127, 0.0069, 0.017, 0.0164]
    pis = [0.99, 0.003, 0.002, 0.003, 0.001, 0.001]
    merged, variances, proportions = merge_components(mixture_state(means, stds, pis))
    assert len(merged) == 4
    np.testing.assert_allclose(sorted(merged), sorted([0.0, (0.003 * 0.2460 + 0.002 * 0.2458 + 0.003 * 0.2462) / 0.008,
                                                       0.35, -0.2146]), rtol=1e-5)
    np.testing.assert_allclose(proportions.sum(), 1.0)
    # 0.35 is 6 narrow σ's away from 0.246: kept apart even at a generous threshold
    assert len(merge_components(mixture_state(means, stds, pis), kl_threshold=10.0)[0]) == 4


def test_quantize_snaps_to_the_most_responsible_mean_and_zeros_exactly():
    state = mixture_state([0.0, -0.5, 0.5, 0.25], [0.05, 0.05, 0.05, 0.01], [0.97, 0.01, 0.01, 0.01])
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.7, 0.7, 2000).astype(np.float32)
    params = {"kernel": jnp.asarray(w.reshape(40, 50)), "bias": jnp.asarray(w[:7]), "step": jnp.array(3)}
    q = optreg.quantize(params, state, kl_threshold=0.0, mask={"kernel": True, "bias": False, "step": False},
                        warn_far_fraction=None)
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
    assert _huffman_bits(np.array([45, 13, 12, 16, 9, 5])) == 224
    assert _huffman_bits(np.array([7])) == 7
    assert _huffman_bits(np.array([])) == 0


def test_report_counts_bits_as_han_et_al():
    a, b, c = 0.25, -0.5, 0.75
    dense = np.zeros((1, 100), np.float32)
    dense[0, [0, 5, 50, 99]] = [a, b, a, c]
    # gaps (from position −1): 1, 5, 45, 49; 5-bit gaps reach 32 → 45 and 49 need one filler each
    entries, symbols = 6, 4  # a, b, c and the filler zero → 2-bit fixed indices
    fixed = entries * (5 + 2) + 3 * 32
    # Huffman: stored gaps 1, 5, 13, 17 (the nonzeros) and 32, 32 (the fillers): counts (2, 1, 1, 1, 1) → 14 bits;
    # values (a: 2, fill: 2, b: 1, c: 1) → code lengths 2, 2, 2, 2 → 12 bits
    huffman = 14 + 12 + 3 * 32
    conv = np.zeros((3, 3, 2, 2), np.float32)
    conv.ravel()[[3, 30]] = [a, a]  # gaps 4, 27 ≤ 256: no fillers; one symbol → 1-bit index; 8-bit gaps
    conv_bits = 2 * (8 + 1) + 32
    conv_huffman = 2 + 2 + 32  # two distinct gaps (1 bit each), one value (1 bit each)
    params = {"dense": jnp.asarray(dense), "conv": jnp.asarray(conv), "bias": jnp.ones(10), "zeros": jnp.zeros(50)}
    report = optreg.compression_report(params, mask={"dense": True, "conv": True, "bias": False, "zeros": True})
    by_path = {layer.path: layer for layer in report.layers}
    assert by_path["dense"].fillers == 2 and by_path["dense"].index_bits == 2 and symbols == 4
    assert by_path["dense"].bits == fixed and by_path["dense"].bits_huffman == huffman
    assert by_path["conv"].bits == conv_bits and by_path["conv"].gap_bits == 8
    assert by_path["conv"].bits_huffman == conv_huffman
    assert by_path["bias"].bits == 32 * 10
    assert by_path["zeros"].bits == 0  # an empty stream
    assert report.bits == fixed + conv_bits + 320
    assert report.size == 100 + 36 + 10 + 50 and report.nonzero == 4 + 2 + 10
    assert math.isclose(report.compression_rate, 32 * 196 / report.bits)
    assert math.isclose(report.compression_rate_huffman, 32 * 196 / report.bits_huffman)
    assert report.distinct_values == 4  # 0, a, b, c over the quantised leaves
    assert "compression rate" in report.table()


# ----------------------------------------------------------------------------- a real encoder, from the description


def han_encode(leaf: np.ndarray, gap_bits: int = 5) -> tuple[str, dict]:
    """Writes one quantised layer as Han et al. describe it and returns (bit string, metadata).

    Row-major positions; each nonzero is an entry (gap − 1 in ``gap_bits`` bits, then its index into the
    sorted symbol table); a gap longer than 2^b is bridged by filler entries (gap 2^b, value 0); the
    codebook stores every distinct nonzero value as its 32-bit IEEE pattern.
    """
    flat = np.asarray(leaf, np.float32).ravel()
    span = 2**gap_bits
    entries, previous = [], -1
    for position in np.flatnonzero(flat):
        gap = int(position) - previous
        while gap > span:
            entries.append((span, 0.0))
            gap -= span
        entries.append((gap, float(flat[position])))
        previous = int(position)
    codebook = sorted({value for _, value in entries if value != 0.0})
    table = sorted({value for _, value in entries})
    index_bits = max(1, math.ceil(math.log2(len(table)))) if table else 0
    bits = "".join(format(struct.unpack(">I", struct.pack(">f", v))[0], "032b") for v in codebook)
    bits += "".join(format(gap - 1, f"0{gap_bits}b") + format(table.index(value), f"0{index_bits}b")
                    for gap, value in entries)
    meta = {"shape": np.shape(leaf), "entries": len(entries), "codebook": len(codebook),
            "zero_symbol": 0.0 in table, "gap_bits": gap_bits, "index_bits": index_bits}
    return bits, meta


def han_decode(bits: str, meta: dict) -> np.ndarray:
    codebook = [struct.unpack(">f", struct.pack(">I", int(bits[32 * k: 32 * k + 32], 2)))[0]
                for k in range(meta["codebook"])]
    table = sorted(codebook + ([0.0] if meta["zero_symbol"] else []))
    out = np.zeros(int(np.prod(meta["shape"])), np.float32)
    cursor, position = 32 * meta["codebook"], -1
    width = meta["gap_bits"] + meta["index_bits"]
    for _ in range(meta["entries"]):
        gap = int(bits[cursor: cursor + meta["gap_bits"]], 2) + 1
        index = int(bits[cursor + meta["gap_bits"]: cursor + width], 2) if meta["index_bits"] else 0
        position += gap
        out[position] = table[index]
        cursor += width
    assert cursor == len(bits)
    return out.reshape(meta["shape"])


def test_report_equals_the_length_of_a_real_encoding_that_decodes_back():
    rng = np.random.default_rng(3)
    levels = np.float32([-0.61, -0.2, 0.13, 0.4, 0.9])
    params = {
        "sparse": np.where(rng.random((300, 100)) < 0.01, rng.choice(levels, (300, 100)), 0.0).astype(np.float32),
        "dense": np.where(rng.random((64, 30)) < 0.4, rng.choice(levels[:2], (64, 30)), 0.0).astype(np.float32),
        "one_value": np.where(rng.random(500) < 0.2, levels[3], 0.0).astype(np.float32),
        "empty": np.zeros(40, np.float32),
        "conv": np.where(rng.random((5, 5, 4, 8)) < 0.02, rng.choice(levels, (5, 5, 4, 8)), 0.0).astype(np.float32),
    }
    report = optreg.compression_report(jax.tree.map(jnp.asarray, params))
    by_path = {layer.path: layer for layer in report.layers}
    total = 0
    for name, leaf in params.items():
        bits, meta = han_encode(leaf, gap_bits=8 if leaf.ndim >= 3 else 5)
        np.testing.assert_array_equal(han_decode(bits, meta), leaf)
        assert by_path[name].bits == len(bits), name
        total += len(bits)
    assert by_path["sparse"].fillers > 0 and by_path["empty"].bits == 0
    assert report.bits == total
    assert math.isclose(report.compression_rate, 32 * sum(leaf.size for leaf in params.values()) / total)


def test_report_from_state_quantizes_first():
    state = mixture_state([0.0, -0.5, 0.5], [0.05, 0.05, 0.05], [0.9, 0.05, 0.05])
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.uniform(-0.6, 0.6, (30, 30)), jnp.float32)}
    from_state = optreg.compression_report(params, state)
    q = optreg.quantize(params, state, warn_far_fraction=None)
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
    q = optreg.quantize({"w": jnp.linspace(-1, 1, 11)}, state, warn_far_fraction=None)
    assert isinstance(q.mixture, MixtureState)
    assert jax.tree.leaves(q.params)[0].shape == (11,)


# ----------------------------------------------------------------------------- snapping on the device, the mask


def brute_force_snap(w: np.ndarray, means, stds, proportions) -> np.ndarray:
    """argmax_j π_j N(w | μ_j, σ_j²) with scipy, in float64 (ties to the lower index, as numpy)."""
    score = np.log(proportions) + norm.logpdf(np.asarray(w, np.float64)[..., None], means, stds)
    return np.asarray(means)[np.argmax(score, axis=-1)]


def test_snapping_on_the_device_equals_a_float64_brute_force():
    means, stds, pis = [0.0, -0.4, 0.3, 0.31, 0.9], [0.02, 0.05, 0.04, 0.01, 0.1], [0.9, 0.03, 0.03, 0.02, 0.02]
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        w = rng.uniform(-1.0, 1.2, (300, 70))
        state = MixtureState(jnp.zeros([], jnp.int32), jnp.asarray(means), jnp.asarray(-2 * np.log(stds)),
                             jnp.asarray(np.log(pis)))
        q = optreg.quantize({"w": jnp.asarray(w)}, state, kl_threshold=0.0, warn_far_fraction=None)
        # the codebook is float32: the brute force uses the same (float32-rounded) mixture, in float64
        m = q.mixture
        stored = (np.asarray(m.means, np.float64), np.exp(-0.5 * np.asarray(m.log_precisions, np.float64)),
                  np.exp(np.asarray(m.mixing_logits, np.float64)))
        np.testing.assert_allclose(stored[0], means, rtol=1e-7)
        np.testing.assert_array_equal(np.asarray(q.params["w"]), brute_force_snap(w, *stored))
    # float32: the same except where two components' scores tie to float32 precision
    state32 = mixture_state(means, stds, pis)
    q32 = optreg.quantize({"w": jnp.asarray(w, jnp.float32)}, state32, kl_threshold=0.0, warn_far_fraction=None)
    merged = q32.mixture
    expected = brute_force_snap(np.asarray(w, np.float32), np.asarray(merged.means, np.float64),
                                np.exp(-0.5 * np.asarray(merged.log_precisions, np.float64)),
                                np.exp(np.asarray(merged.mixing_logits, np.float64)))
    assert np.mean(np.asarray(q32.params["w"]) == expected.astype(np.float32)) > 0.9999


def test_snapping_forms_no_n_by_k_array_and_keeps_the_sharding():
    n, k = 4099, 7
    w = jnp.linspace(-1.0, 1.0, n)
    mixture = (jnp.linspace(-1.0, 1.0, k).at[0].set(0.0), jnp.zeros(k), jnp.full(k, -np.log(k)))
    jaxpr = jax.make_jaxpr(lambda w, *m: _snap_leaf(w, *m, far_sigmas=3.0))(w, *mixture)
    shapes = [tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for sub in [eqn.params.get("jaxpr")] if sub is not None
              for inner in sub.jaxpr.eqns for v in inner.outvars]
    assert shapes and not [shape for shape in shapes if n in shape and k in shape]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    placed = jax.device_put(w, sharding)
    state = MixtureState(jnp.zeros([], jnp.int32), *mixture)
    out = optreg.quantize({"w": placed}, state, warn_far_fraction=None).params["w"]
    assert isinstance(out, jax.Array) and out.sharding == placed.sharding


def test_quantize_and_report_reuse_the_mask_the_transform_recorded():
    params = {"kernel": jnp.linspace(-0.6, 0.6, 40).reshape(8, 5), "bias": jnp.linspace(0.01, 0.2, 5)}
    mask = {"kernel": True, "bias": False}
    state = optreg.soft_share_prior(1e-3, 4, mask=mask, init_range=(-0.5, 0.5), init_std=0.05).init(params)
    q = optreg.quantize(params, state, warn_far_fraction=None)
    np.testing.assert_array_equal(q.params["bias"], params["bias"])  # not quantised: the recorded mask
    assert not np.array_equal(np.asarray(q.params["kernel"]), np.asarray(params["kernel"]))
    explicit = optreg.quantize(params, state._replace(mask=None), mask=mask, warn_far_fraction=None)
    jax.tree.map(np.testing.assert_array_equal, q.params, explicit.params)
    report = optreg.compression_report(params, state)
    assert {layer.path: layer.quantized for layer in report.layers} == mask
    assert optreg.compression_report(params, q) == report
    assert report == optreg.compression_report(params, state._replace(mask=None), mask=mask)
    with pytest.raises(ValueError, match="recorded"):
        optreg.quantize(params, state, mask={"kernel": True, "bias": True})


def test_quantize_and_report_find_the_mixture_state_inside_optimizer_states():
    import optax

    params = {"kernel": jnp.linspace(-0.6, 0.6, 40).reshape(8, 5), "bias": jnp.linspace(0.01, 0.2, 5)}
    mask = {"kernel": True, "bias": False}
    prior = optreg.soft_share_prior(1e-3, 4, mask=mask, init_range=(-0.5, 0.5), init_std=0.05)
    expected = optreg.quantize(params, prior.init(params), warn_far_fraction=None).params
    static = ("num_components", "grid_size", "refresh_every")
    injected = optax.inject_hyperparams(optreg.soft_share_prior, static_args=static)(
        1e-3, 4, mask=mask, init_range=(-0.5, 0.5), init_std=0.05)
    for tx in (optax.chain(prior, optax.adam(1e-3)), optax.MultiSteps(optax.chain(prior, optax.sgd(0.1)), 2),
               optax.chain(injected, optax.adam(1e-3))):
        state = tx.init(params)
        got = optreg.quantize(params, state, warn_far_fraction=None).params
        jax.tree.map(np.testing.assert_array_equal, got, expected)
        assert optreg.compression_report(params, state).bits == optreg.compression_report(expected, mask=mask).bits
    with pytest.raises(TypeError, match="an optimizer state holding one, got tuple without one"):
        optreg.quantize(params, optax.adam(1e-3).init(params))
    with pytest.raises(ValueError, match="holds 2 MixtureStates"):
        optreg.compression_report(params, optax.chain(prior, prior).init(params))


def test_under_optax_masked_its_mask_maps_the_state_onto_the_params():
    import optax

    params = {"kernel": jnp.linspace(-0.6, 0.6, 40).reshape(8, 5), "bias": jnp.linspace(0.01, 0.2, 5)}
    mask = {"kernel": True, "bias": False}
    prior = dict(init_range=(-0.5, 0.5), init_std=0.05)
    direct = optreg.quantize(params, optreg.soft_share_prior(1e-3, 4, mask=mask, **prior).init(params),
                             warn_far_fraction=None)
    masked = optax.masked(optreg.soft_share_prior(1e-3, 4, **prior), mask).init(params)
    got = optreg.quantize(params, masked, mask=mask, warn_far_fraction=None)
    jax.tree.map(np.testing.assert_array_equal, got.params, direct.params)
    assert {layer.path: layer.quantized for layer in optreg.compression_report(params, masked, mask=mask).layers} \
        == mask
    with pytest.raises(ValueError, match=r"under optax.masked, its mask= too"):
        optreg.quantize(params, masked)


def test_quantize_under_jit_says_to_call_it_outside():
    params = {"w": jnp.array([0.001, -0.5, 0.52, 0.49])}
    state = optreg.soft_share_prior(1e-3, 3, init_range=(-0.5, 0.5), init_std=0.05).init(params)
    with pytest.raises(TypeError, match="the state is traced.*call it outside jax.jit"):
        jax.jit(lambda p, s: optreg.quantize(p, s, warn_far_fraction=None).params)(params, state)


def test_diagnostics_and_the_warning_when_snapping_moves_weights_far():
    means, stds, pis = [0.0, -0.5, 0.5], [0.01, 0.02, 0.02], [0.9, 0.05, 0.05]
    state = mixture_state(means, stds, pis)
    near = np.float32([0.001, -0.5, 0.51, 0.49, -0.002] * 40)
    far = near.copy()
    far[:10] = 0.25  # 10 of 200 weights halfway between components: many σ from any of them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = optreg.quantize({"w": jnp.asarray(near)}, state)
    assert quiet.diagnostics[0].far_fraction == 0.0
    with pytest.warns(optreg.SnapWarning, match="w 5.0%"):
        loud = optreg.quantize({"w": jnp.asarray(far)}, state)
    d = loud.diagnostics[0]
    # by hand: the snapped component of 0.25 and its distance in σ's
    target = brute_force_snap(np.float32([0.25]), means, stds, pis)[0]
    sigma = stds[means.index(target)]
    assert d.path == "w" and d.size == 200 and d.far_fraction == pytest.approx(10 / 200)
    assert d.max_sigmas == pytest.approx(abs(0.25 - target) / sigma, rel=1e-5)
    assert d.zero_fraction == pytest.approx(np.mean(brute_force_snap(far, means, stds, pis) == 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optreg.quantize({"w": jnp.asarray(far)}, state, warn_far_fraction=None)
