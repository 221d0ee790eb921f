"""Smoke test of an *installed* optreg: imports it and runs every transform once, jitted.

Run it from outside the source tree, so that the installed package is the one
imported (``make lowest`` and ``make package`` do)::

    cd "$(mktemp -d)" && /path/to/venv/bin/python /path/to/optreg/tools/smoke_test.py

It needs only optreg's own dependencies (jax, optax, chex): no Flax, no test
tools. It checks, for every transform in optreg's registry, that a jitted
``init`` + ``update`` + ``apply_updates`` step in an Adam chain runs and stays
finite; a penalty and its ``jax.grad``; a proximal operator, a projection and
their derivatives; and ``optax.inject_hyperparams``. Exit status 0 means the
installation works.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any


def _public(name: str) -> Any:
    """A public name from optreg's namespaces (``optreg``, ``optreg.prox``, ``optreg.projections``)."""
    import importlib

    import optreg

    for namespace in ("optreg", "optreg.prox", "optreg.projections"):
        try:
            module = importlib.import_module(namespace)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"optreg {optreg.__version__} has no public {name!r}")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed as a distribution)"


def _finite(tree: Any) -> bool:
    import jax
    import jax.numpy as jnp

    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def main() -> int:
    import jax
    import jax.numpy as jnp
    import optax

    import optreg
    from optreg import _registry

    versions = {name: _version(name) for name in ("optreg", "jax", "jaxlib", "optax", "chex", "numpy")}
    print("smoke test of", optreg.__file__)
    print("  " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    params = {"Dense_0": {"kernel": jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), "bias": jnp.zeros(4)},
              "Dense_1": {"kernel": jnp.linspace(-0.5, 0.7, 12).reshape(4, 3), "bias": jnp.zeros(3)}}
    grads = jax.tree.map(lambda leaf: 0.1 * jnp.ones_like(leaf), params)

    failures = []
    for entry in _registry.TRANSFORMS:
        try:
            tx = _registry.in_chain(entry, params)
            state = jax.jit(tx.init)(params)

            @jax.jit
            def step(p: Any, s: Any, tx: Any = tx) -> Any:
                updates, s = tx.update(grads, s, p)
                return optax.apply_updates(p, updates), s

            new_params, _ = step(params, state)
            new_params, _ = step(new_params, state)
            assert _finite(new_params), "non-finite parameters"
            print(f"  ok   {entry.name} ({entry.placement})")
        except Exception as error:  # noqa: BLE001 - report every failure, then fail
            failures.append(entry.name)
            print(f"  FAIL {entry.name}: {type(error).__name__}: {error}")

    checks = {
        "jitted chain(add_decayed_weights_q, adam)": lambda: _chain_step(params, grads),
        "lq_penalty and its jax.grad": lambda: _penalty(params),
        "prox_lq, jax.grad and jax.jvp": _prox,
        "projection_lq_ball": lambda: _projection(params),
        "optax.inject_hyperparams": lambda: _injected(params, grads),
    }
    for name, check in checks.items():
        try:
            check()
            print(f"  ok   {name}")
        except Exception as error:  # noqa: BLE001
            failures.append(name)
            print(f"  FAIL {name}: {type(error).__name__}: {error}")
    if failures:
        print(f"smoke test FAILED: {len(failures)} of {len(_registry.TRANSFORMS) + len(checks)}: {failures}")
        return 1
    print(f"smoke test passed: {len(_registry.TRANSFORMS) + len(checks)} checks")
    return 0


def _chain_step(params: Any, grads: Any) -> None:
    import jax
    import optax

    import optreg

    tx = optax.chain(optreg.add_decayed_weights_q(1e-2), optax.adam(1e-3))

    @jax.jit
    def step(p: Any, s: Any) -> Any:
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    new_params, _ = step(params, tx.init(params))
    assert _finite(new_params)


def _penalty(params: Any) -> None:
    import jax
    import numpy as np

    lq_penalty = _public("lq_penalty")
    value = lq_penalty(params, weight_decay=0.5, q=2.0)
    grad = jax.grad(lambda p: lq_penalty(p, weight_decay=0.5, q=2.0))(params)
    expected = 0.25 * sum(float(np.sum(np.square(leaf))) for leaf in jax.tree.leaves(params))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(grad["Dense_0"]["kernel"], 0.5 * params["Dense_0"]["kernel"], rtol=1e-5)


def _prox() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    prox_lq = _public("prox_lq")
    x = jnp.array([-2.0, -0.05, 0.0, 0.3, 1.5])
    np.testing.assert_allclose(jax.jit(prox_lq, static_argnums=2)(x, 0.1, 1.0), [-1.9, 0.0, 0.0, 0.2, 1.4], atol=1e-6)
    # derivatives trace and stay finite (their values are checked by the test suite)
    assert _finite(jax.grad(lambda v: prox_lq(v, 0.1, 1.0).sum())(x))
    assert _finite(jax.jvp(lambda v: prox_lq(v, 0.5, 2.0), (x,), (jnp.ones_like(x),)))


def _projection(params: Any) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    projection_lq_ball = _public("projection_lq_ball")
    projected = jax.jit(lambda tree: projection_lq_ball(tree, 1.0, 2.0))(params)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(projected)))
    np.testing.assert_allclose(float(norm), 1.0, rtol=1e-5)


def _injected(params: Any, grads: Any) -> None:
    import jax
    import optax

    import optreg

    tx = optax.inject_hyperparams(optreg.add_decayed_weights_q, static_args=("q",))(weight_decay=1e-2, q=1.5)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert _finite(updates)


if __name__ == "__main__":
    sys.exit(main())
