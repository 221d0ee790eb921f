"""Consistent regularizers: a separate λ_j per layer (seed 000 §2.1).

    Ω(w) = Σ_j (λ_j/q) · Σ_{w ∈ W_j} |w|^q

Layers are chosen by their Flax parameter paths ('/'-joined keys:
``params/Dense_0/kernel`` in linen, ``linear1/kernel`` in NNX).
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _hyper, _tree
from optreg._checks import check_exponent, check_positive, require_params
from optreg._hyper import CountState, Hyperparameter
from optreg._numerics import compute_dtype
from optreg._tree import Mask
from optreg.decay import DEFAULT_EPS, lq_gradient
from optreg.masks import decay_mask

WeightDecays = Union[Mapping[str, Hyperparameter], Callable[[str, Any], Optional[Hyperparameter]], Any]


@dataclass(frozen=True)
class ResolvedDecay:
    """What one parameter gets: its path, λ (None: not decayed) and why."""

    path: str
    shape: tuple
    dtype: str
    weight_decay: Optional[Hyperparameter]
    reason: str


def _is_hyperparameter(value: Any) -> bool:
    return callable(value) or isinstance(value, (numbers.Real, np.generic, np.ndarray, jax.Array))


def _is_rules(weight_decays: Any) -> bool:
    return (
        isinstance(weight_decays, Mapping)
        and len(weight_decays) > 0
        and all(isinstance(key, str) for key in weight_decays)
        and all(_is_hyperparameter(value) for value in weight_decays.values())
    )


class Rules:
    """``weight_decays`` in one of its three forms, checked, resolvable against params.

    Forms:
      (a) mapping regex -> λ, matched with ``re.search`` against each path; the
          first matching rule wins;
      (b) callable ``(path, leaf) -> λ or None``;
      (c) pytree of λ (or None) with the params' structure.
    """

    def __init__(self, weight_decays: WeightDecays, mask: Mask):
        self.mask = mask
        self.source = weight_decays
        self.patterns: Optional[list[tuple[re.Pattern, Hyperparameter]]] = None
        if _is_rules(weight_decays):
            self.patterns = []
            for pattern, value in cast(Mapping[str, Hyperparameter], weight_decays).items():
                try:
                    compiled = re.compile(pattern)
                except re.error as error:
                    raise ValueError(
                        f"weight_decays: {pattern!r} is not a valid regular expression: {error}"
                    ) from error
                _hyper.check_hyperparameter(value, f"weight_decays[{pattern!r}]")
                self.patterns.append((compiled, value))
        elif isinstance(weight_decays, Mapping) and len(weight_decays) == 0:
            raise ValueError("weight_decays is empty: give at least one rule, e.g. {'Dense_0/kernel': 1e-4}.")
        elif weight_decays is None:
            raise TypeError(
                "weight_decays must be a mapping regex -> λ, a callable (path, leaf) -> λ, or a pytree of λ."
            )

    def resolve(self, params: Any) -> list[ResolvedDecay]:
        """One :class:`ResolvedDecay` per leaf of ``params``; raises on a rule that matches nothing."""
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        paths = [_tree.path_to_string(path) for path, _ in flat]
        leaves = [leaf for _, leaf in flat]
        selected = _tree.resolve_mask(self.mask, params)
        if self.patterns is not None:
            decays, reasons = self._from_patterns(paths, leaves, selected)
        elif callable(self.source):
            decays = [self.source(path, leaf) for path, leaf in zip(paths, leaves, strict=True)]
            reasons = ["callable" if d is not None else "callable returned None" for d in decays]
        else:
            try:
                treedef: Any = jax.tree_util.tree_structure(params)
                decays = treedef.flatten_up_to(self.source)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    "weight_decays (a pytree of λ) does not match the params' structure.\n"
                    f"params paths: {paths}\n{error}"
                ) from error
            reasons = ["pytree" if d is not None else "pytree leaf is None" for d in decays]
        result = []
        for path, leaf, decay, reason, chosen in zip(paths, leaves, decays, reasons, selected, strict=True):
            if decay is not None:
                _hyper.check_hyperparameter(decay, f"weight_decays at {path!r}")
            if decay is not None and not chosen:
                decay, reason = None, "masked out"
            if decay is not None and not _tree.is_floating(leaf):
                decay, reason = None, "not floating"
            dtype = str(getattr(leaf, "dtype", type(leaf).__name__))
            result.append(ResolvedDecay(path, tuple(np.shape(leaf)), dtype, decay, reason))
        return result

    def _from_patterns(self, paths: list[str], leaves: list[Any], selected: list[bool]):
        assert self.patterns is not None
        decays: list[Optional[Hyperparameter]] = []
        reasons: list[str] = []
        used: dict[str, list[bool]] = {p.pattern: [] for p, _ in self.patterns}
        for path, chosen in zip(paths, selected, strict=True):
            for pattern, value in self.patterns:
                if pattern.search(path):
                    decays.append(value)
                    reasons.append(f"rule {pattern.pattern!r}")
                    used[pattern.pattern].append(chosen)
                    break
            else:
                decays.append(None)
                reasons.append("no rule matches")
        for pattern_text, matched in used.items():
            if not matched:
                raise ValueError(
                    f"weight_decays rule {pattern_text!r} matches no parameter (rules are tried in order and "
                    f"the first match wins, so an earlier rule may take its parameters). "
                    f"Available paths: {paths}"
                )
            if not any(matched):
                raise ValueError(
                    f"weight_decays rule {pattern_text!r} matches only parameters the mask leaves out "
                    f"(by default optreg.decay_mask: no biases, norm scales or 1-D parameters). "
                    f"Pass mask=None to decay them anyway."
                )
        return decays, reasons


class PerLayerDecay(optax.GradientTransformation):
    """The transformation returned by :func:`per_layer_decay`; it remembers its rules
    so that :func:`describe` can show them."""

    rules: Rules
    q: float


def per_layer_decay(
    weight_decays: WeightDecays,
    q: float = 2.0,
    mask: Mask = decay_mask,
    eps: float = DEFAULT_EPS,
) -> PerLayerDecay:
    """Adds λ_j·sign(w)·|w|^(q−1) with a separate λ_j per parameter ("consistent regularizers").

    The gradient of Ω(w) = Σ_j (λ_j/q)·Σ_{w ∈ W_j} |w|^q (:func:`per_layer_penalty`).
    Example::

        tx = optax.chain(
            optreg.per_layer_decay({"Dense_0/kernel": 1e-3, "Dense_1/kernel": 1e-4}),
            optax.adam(1e-3))
        print(optreg.describe(tx_or_rules, params))

    Args:
      weight_decays: (a) a mapping regex -> λ (float or schedule), matched with
        ``re.search`` against each parameter path, first match wins; (b) a
        callable ``(path, leaf) -> λ or None``; (c) a pytree of λ (None: no
        decay) with the params' structure. A flat mapping of strings to numbers or
        schedules is always read as (a). Parameters that match no rule are not
        decayed; a rule that matches no parameter is an error at ``init``.
      q: exponent q > 0 (static).
      mask: which leaves may be decayed at all. Default :func:`optreg.decay_mask`
        (no biases, norm scales, 1-D parameters or batch statistics); ``None``: all.
      eps: floor on |w| for q < 1 (see :func:`optreg.lq_gradient`).

    Returns:
      A :class:`PerLayerDecay` (an ``optax.GradientTransformation``); state is
      a ``CountState``; ``update`` requires ``params``.

    References:
      Bishop, *Pattern Recognition and Machine Learning*, §5.5.1 (consistent Gaussian priors), 2006.
    """
    q = check_exponent(q)
    check_positive(eps, "eps")
    rules = Rules(weight_decays, mask)

    def init_fn(params: Any) -> CountState:
        _tree.check_real(params)
        if _tree.has_arrays(params):  # the rules are checked again in update
            rules.resolve(params)
        return _hyper.init_count()

    def update_fn(updates: Any, state: CountState, params: Optional[Any] = None) -> tuple[Any, CountState]:
        params = require_params(params, "per_layer_decay")
        resolved = rules.resolve(params)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        weights = _tree.flatten_like(treedef, params)
        out = []
        for update, weight, entry in zip(leaves, weights, resolved, strict=True):
            if entry.weight_decay is None:
                out.append(update)
                continue
            lam = _hyper.value_at(entry.weight_decay, state.count)
            update = jnp.asarray(update)
            out.append(update + lq_gradient(weight, lam, q, eps).astype(update.dtype))
        return jax.tree_util.tree_unflatten(treedef, out), _hyper.next_count(state)

    transform = PerLayerDecay(init_fn, update_fn)
    transform.rules = rules
    transform.q = q
    return transform


def per_layer_penalty(
    params: Any,
    weight_decays: WeightDecays,
    q: float = 2.0,
    mask: Mask = decay_mask,
    count: int = 0,
) -> jax.Array:
    """Ω(w) = Σ_j (λ_j/q)·Σ_{w ∈ W_j}|w|^q, the loss-side form of :func:`per_layer_decay`.

    Schedules are evaluated at ``count``.
    """
    q = check_exponent(q)
    _tree.check_real(params)
    resolved = Rules(weight_decays, mask).resolve(params)
    total = jnp.zeros([], jnp.float32)
    for leaf, entry in zip(jax.tree.leaves(params), resolved, strict=True):
        if entry.weight_decay is not None:
            lam = _hyper.value_at(entry.weight_decay, jnp.asarray(count, jnp.int32))
            magnitude = jnp.abs(leaf.astype(compute_dtype(leaf.dtype)))
            total = total + lam / q * jnp.sum(magnitude**q)
    return total


def describe(tx_or_rules: Union[PerLayerDecay, WeightDecays], params: Any, mask: Mask = decay_mask) -> str:
    """A table of path, shape, dtype, λ and the reason, one row per parameter.

    Args:
      tx_or_rules: a :func:`per_layer_decay` transform (its own mask is used),
        or ``weight_decays`` in any form :func:`per_layer_decay` takes.
      params: the parameters (linen dict or NNX state).
      mask: used only when ``tx_or_rules`` is not a transform.

    Returns:
      The table as a string; ``print`` it.
    """
    rules = tx_or_rules.rules if isinstance(tx_or_rules, PerLayerDecay) else Rules(tx_or_rules, mask)
    rows = [("path", "shape", "dtype", "weight_decay", "why")]
    for entry in rules.resolve(params):
        if entry.weight_decay is None:
            shown = "-"
        elif callable(entry.weight_decay):
            shown = f"schedule ({float(entry.weight_decay(jnp.zeros([], jnp.int32))):.3g} at step 0)"
        else:
            shown = f"{float(entry.weight_decay):.3g}"
        rows.append((entry.path, str(entry.shape), entry.dtype, shown, entry.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
