"""Consistent regularizers: a separate λ_j per layer (Bishop & Bishop 2024, §9.2.1; Bishop 2006, §5.5.1).

    Ω(w) = Σ_j (λ_j/q) · Σ_{w ∈ W_j} |w|^q

Layers are chosen by their Flax parameter paths ('/'-joined keys:
``params/Dense_0/kernel`` in linen, ``linear1/kernel`` in NNX).
"""

from __future__ import annotations

import inspect
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
from optreg._decay import DEFAULT_EPS, lq_gradient, safe_power_sum
from optreg._hyper import CountState, Hyperparameter
from optreg._tree import Mask

WeightDecays = Union[Mapping[str, Hyperparameter], Callable[[str, Any], Optional[Hyperparameter]], Any]


@dataclass(frozen=True)
class _ResolvedDecay:
    """What one parameter gets: its path, λ (None: not decayed) and why."""

    path: str
    shape: tuple
    dtype: str
    weight_decay: Optional[Hyperparameter]
    reason: str


def _is_hyperparameter(value: Any) -> bool:
    return _tree.is_function(value) or isinstance(value, (numbers.Real, np.generic, np.ndarray, jax.Array))


def _is_rules(weight_decays: Any) -> bool:
    return (
        isinstance(weight_decays, Mapping)
        and len(weight_decays) > 0
        and all(isinstance(key, str) for key in weight_decays)
        and all(_is_hyperparameter(value) for value in weight_decays.values())
    )


class _Rules:
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

    def resolve(self, params: Any, *, acting: bool = True) -> list[_ResolvedDecay]:
        """One :class:`_ResolvedDecay` per leaf of ``params``; raises on a rule that matches nothing, and
        (``acting``: for a transform or a penalty, not for :func:`describe`) on a decayed running statistic."""
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        paths = [_tree.path_to_string(path) for path, _ in flat]
        leaves = [leaf for _, leaf in flat]
        selected = _tree.resolve_mask(self.mask, params, statistics=True)  # only the rules' leaves are checked
        if self.patterns is not None:
            decays, reasons = self._from_patterns(paths, leaves, selected)
        elif _tree.is_function(self.source):
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
            result.append(_ResolvedDecay(path, tuple(np.shape(leaf)), dtype, decay, reason))
        if acting:
            _tree.check_no_running_statistics(params, [entry.weight_decay is not None for entry in result])
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
                    f"(optreg.decay_mask, for example, leaves out biases, norm scales and 1-D parameters). "
                    f"Change the rule or the mask."
                )
        return decays, reasons


class PerLayerDecay(optax.GradientTransformation):
    """The transformation returned by :func:`per_layer_decay`; it remembers its rules
    so that :func:`describe` can show them."""

    rules: _Rules
    q: float


def per_layer_decay(
    weight_decays: WeightDecays,
    q: float = 2.0,
    *,
    mask: Mask = None,
    eps: float = DEFAULT_EPS,
) -> PerLayerDecay:
    """Adds λ_j·sign(w)·|w|^(q−1) with a separate λ_j per parameter ("consistent regularizers").

    The gradient of Ω(w) = Σ_j (λ_j/q)·Σ_{w ∈ W_j} |w|^q (:func:`per_layer_penalty`).

    Args:
      weight_decays: (a) a mapping regex -> λ (float or schedule), matched with
        ``re.search`` against each parameter path, first match wins; (b) a
        function ``(path, leaf) -> λ or None``; (c) a pytree of λ (None: no
        decay) with the params' structure (never called, even if the object is
        callable, e.g. an Equinox module). A flat mapping of strings to numbers or
        schedules is always read as (a). Parameters that match no rule are not
        decayed; a rule that matches no parameter is an error at ``init``.
      q: exponent q > 0 (static).
      mask: which leaves may be decayed at all, as optax: ``None`` (default,
        every floating leaf a rule selects), a pytree of bools or a function of
        the params, e.g. :func:`optreg.decay_mask` (no biases, norm scales,
        1-D parameters or batch statistics).
      eps: floor on |w| for q < 1 (see :func:`optreg.lq_gradient`).

    Returns:
      A :class:`PerLayerDecay` (an ``optax.GradientTransformation``); state is
      a ``CountState``; ``update`` requires ``params``. Under
      ``optax.inject_hyperparams`` use ``static_args=("q", "weight_decays")``
      (plus ``"mask"`` for a function mask): the rules are static.

    Example:
      >>> import jax.numpy as jnp, optax, optreg
      >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
      ...           "Dense_1": {"kernel": jnp.ones((2, 1)), "bias": jnp.ones(1)}}
      >>> decay = optreg.per_layer_decay({"Dense_0/kernel": 1e-3, "Dense_1/kernel": 1e-4})
      >>> tx = optax.chain(decay, optax.adam(1e-3))
      >>> print(optreg.describe(tx, params))
      path            shape   dtype    weight_decay  why
      --------------  ------  -------  ------------  ---------------------
      Dense_0/bias    (2,)    float32  -             no rule matches
      Dense_0/kernel  (2, 2)  float32  0.001         rule 'Dense_0/kernel'
      Dense_1/bias    (1,)    float32  -             no rule matches
      Dense_1/kernel  (2, 1)  float32  0.0001        rule 'Dense_1/kernel'

    References:
      Bishop & Bishop, *Deep Learning: Foundations and Concepts*, Springer 2024, §9.2 (consistent regularizers).
      Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, §5.5.1 (consistent Gaussian priors).
    """
    q = check_exponent(q)
    check_positive(eps, "eps")
    rules = _Rules(weight_decays, mask)

    def init_fn(params: Any) -> CountState:
        _tree.check_real(params)
        if _tree.has_arrays(params):  # the rules are checked again in update
            rules.resolve(params)
        return _hyper.init_count()

    def update_fn(updates: Any, state: CountState, params: Optional[Any] = None) -> tuple[Any, CountState]:
        params = require_params(params, "per_layer_decay")
        lambdas = [
            None if entry.weight_decay is None else _hyper.value_at(entry.weight_decay, state.count)
            for entry in rules.resolve(params)
        ]

        def add(update: jax.Array, weight: jax.Array, value: jax.Array) -> jax.Array:
            return update + lq_gradient(weight, value, q, eps=eps).astype(update.dtype)

        return _tree.map_selected(add, lambdas, updates, params), _hyper.next_count(state)

    transform = PerLayerDecay(init_fn, update_fn)
    transform.rules = rules
    transform.q = q
    return transform


def per_layer_penalty(
    params: Any,
    weight_decays: WeightDecays,
    q: float = 2.0,
    *,
    mask: Mask = None,
    count: Any = 0,
) -> jax.Array:
    """Ω(w) = Σ_j (λ_j/q)·Σ_{w ∈ W_j}|w|^q, the loss-side form of :func:`per_layer_decay`.

    Args:
      params: any pytree of arrays.
      weight_decays: the rules, in any form :func:`per_layer_decay` takes.
      q: exponent q > 0 (static).
      mask: optax-style mask (default ``None``), as in :func:`per_layer_decay`.
      count: the step at which schedules are evaluated.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"a": {"kernel": jnp.full((2,), 2.0)}, "b": {"kernel": jnp.full((2,), 3.0)}}
      >>> round(float(optreg.per_layer_penalty(params, {"a/": 0.1, "b/": 0.01})), 4)
      0.49

    References:
      Bishop & Bishop, *Deep Learning: Foundations and Concepts*, Springer 2024, §9.2.
    """
    q = check_exponent(q)
    _tree.check_real(params)
    resolved = _Rules(weight_decays, mask).resolve(params)
    total = jnp.zeros([], jnp.float32)
    for leaf, entry in zip(jax.tree.leaves(params), resolved, strict=True):
        if entry.weight_decay is not None:
            lam = _hyper.penalty_value(entry.weight_decay, count)
            total = total + lam / q * safe_power_sum(jnp.asarray(leaf), q)
    return total


def _find_per_layer_decays(transform: Any, depth: int = 0, seen: Optional[set] = None) -> list[PerLayerDecay]:
    """Per-layer decays inside ``transform``: itself, or reachable through the closures of an
    optax combinator's functions (``optax.chain``, ``named_chain``, ``masked``, ...)."""
    seen = set() if seen is None else seen
    if id(transform) in seen or depth > 8:
        return []
    seen.add(id(transform))
    if isinstance(transform, PerLayerDecay):
        return [transform]
    found: list[PerLayerDecay] = []
    children: list[Any] = []
    if isinstance(transform, (tuple, list)):
        children = list(transform)
    elif isinstance(transform, dict):
        children = list(transform.values())
    elif isinstance(transform, optax.GradientTransformation):
        children = [transform.init, transform.update]
    elif callable(getattr(transform, "gradient_transformation", None)):  # optax.MultiSteps
        children = list(vars(transform).values())
    elif inspect.ismethod(transform):
        children = [transform.__self__]
    elif callable(transform):
        children = _closure(transform)
        rebuilt = _injected_per_layer_decay(children, seen)
        if rebuilt is not None:
            return rebuilt
    for child in children:
        found.extend(_find_per_layer_decays(child, depth + 1, seen))
    return found


def _injected_per_layer_decay(contents: list[Any], seen: set) -> Optional[list[PerLayerDecay]]:
    """The per-layer decay that ``optax.inject_hyperparams(per_layer_decay, ...)`` builds at each update
    (its init's and update's closures hold the factory and the keyword dicts; no instance exists
    between updates): None if ``contents`` are not such a closure, [] if its decay was found already."""
    if not any(item is per_layer_decay for item in contents):
        return None
    kwargs: dict[str, Any] = {}
    for item in contents:
        if isinstance(item, dict):
            kwargs.update(item)
    holder = next((item for item in contents if isinstance(item, dict) and "weight_decays" in item), None)
    if holder is None:
        return None
    if ("injected", id(holder)) in seen:
        return []
    seen.add(("injected", id(holder)))
    allowed = inspect.signature(per_layer_decay).parameters
    return [cast(PerLayerDecay, per_layer_decay(**{k: v for k, v in kwargs.items() if k in allowed}))]


def _closure(function: Any) -> list[Any]:
    """What a function's closure holds (nothing for a function without one)."""
    return [cell.cell_contents for cell in getattr(function, "__closure__", None) or () if _has_contents(cell)]


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def describe(tx_or_rules: Any, params: Any, *, mask: Mask = None) -> str:
    """A table of path, shape, dtype, λ and the reason, one row per parameter.

    Args:
      tx_or_rules: a :func:`per_layer_decay` transform, an optax chain (or other
        combinator) holding exactly one, or ``weight_decays`` in any form
        :func:`per_layer_decay` takes.
      params: the parameters (linen dict, NNX state, Equinox-filtered tree).
      mask: used only when ``tx_or_rules`` are rules (a transform has its own).

    Returns:
      The table as a string; ``print`` it.

    Raises:
      ValueError: for a transform that holds no per-layer decay, or several.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> print(optreg.describe({"kernel": 1e-4}, {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}))
      path    shape   dtype    weight_decay  why
      ------  ------  -------  ------------  ---------------
      bias    (2,)    float32  -             no rule matches
      kernel  (3, 2)  float32  0.0001        rule 'kernel'
    """
    if isinstance(tx_or_rules, optax.GradientTransformation) or \
            callable(getattr(tx_or_rules, "gradient_transformation", None)):
        found = _find_per_layer_decays(tx_or_rules)
        if len(found) != 1:
            what = "no per_layer_decay" if not found else f"{len(found)} per_layer_decay transforms"
            raise ValueError(
                f"describe: the transform holds {what}; pass the per_layer_decay transform itself "
                "(keep a reference: decay = optreg.per_layer_decay(...); tx = optax.chain(decay, ...)) "
                "or its weight_decays."
            )
        rules = found[0].rules
    else:
        rules = _Rules(tx_or_rules, mask)
    return _table(rules.resolve(params, acting=False))


def _table(resolved: list[_ResolvedDecay]) -> str:
    rows = [("path", "shape", "dtype", "weight_decay", "why")]
    for entry in resolved:
        if entry.weight_decay is None:
            shown = "-"
        elif _tree.is_function(entry.weight_decay):
            shown = f"schedule ({float(entry.weight_decay(jnp.zeros([], jnp.int32))):.3g} at step 0)"
        else:
            shown = f"{float(cast(Any, entry.weight_decay)):.3g}"
        rows.append((entry.path, str(entry.shape), entry.dtype, shown, entry.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
