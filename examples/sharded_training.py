"""Sharded (FSDP-style) training of a Flax model with optreg regularizers.

    python examples/sharded_training.py                  # 8 devices; simulated on CPU when there is no accelerator
    python examples/sharded_training.py --steps 50 --check   # also train on one device and compare

    # two processes on one machine, 4 CPU devices each: what a two-host job does
    python examples/sharded_training.py --num-processes 2 --process-id 0 --coordinator localhost:12355 &
    python examples/sharded_training.py --num-processes 2 --process-id 1 --coordinator localhost:12355

The layout is FSDP / ZeRO-3 style on a one-axis mesh: every parameter with at
least 1024 elements is split along its largest dimension divisible by the
number of devices, smaller ones (biases) are replicated; the optimizer state
follows the same rule, so Adam's moments are split like their parameters; each
batch is split along its first dimension over the same axis. ``jax.jit`` and
the GSPMD partitioner insert the collectives. The optreg transforms are used
unchanged: the per-layer decay and the L1 proximal step are elementwise, so
they run on each device's shard without communication.

On a cluster, start one process per host and pass ``--distributed`` (then
``jax.distributed.initialize()`` finds the coordinator itself on Slurm, Open
MPI, Kubernetes/GKE and Cloud TPU) or the three explicit flags above.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np

#: Leaves with fewer elements than this stay replicated.
MIN_SHARDED_SIZE = 1024
AXIS = "fsdp"
LEARNING_RATE = 3e-3


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--devices", type=int, default=8, help="CPU devices to simulate in all (if on CPU)")
    parser.add_argument("--check", action="store_true", help="also train on one device and compare")
    parser.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with auto-detection")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    return parser.parse_args(argv)


def start_jax(args: argparse.Namespace) -> None:
    """Device setup; must run before JAX touches a backend."""
    # Only affects the CPU backend: on a CPU-only machine this simulates devices.
    jax.config.update("jax_num_cpu_devices", max(1, args.devices // args.num_processes))
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


# ----------------------------------------------------------------------------- the sharding rule


def fsdp_spec(shape: tuple[int, ...], num_devices: int) -> jax.sharding.PartitionSpec:
    """Split the largest dimension divisible by ``num_devices``; replicate small or indivisible leaves."""
    P = jax.sharding.PartitionSpec
    if int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return P()
    dims = [d for d, size in enumerate(shape) if size % num_devices == 0]
    if not dims:
        return P()
    split = max(dims, key=lambda d: shape[d])
    return P(*[AXIS if d == split else None for d in range(len(shape))])


def fsdp_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """A NamedSharding per leaf (arrays or ``jax.ShapeDtypeStruct``) by :func:`fsdp_spec`."""
    return jax.tree.map(lambda leaf: jax.sharding.NamedSharding(mesh, fsdp_spec(leaf.shape, mesh.size)), tree)


# ----------------------------------------------------------------------------- model, data, optimizer


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (8x8 images, 10 classes), standardised, a fixed 1437/360 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    return (
        ((x_train - mean) / std).astype(np.float32), y_train.astype(np.int32),
        ((x_test - mean) / std).astype(np.float32), y_test.astype(np.int32),
    )


def make_model() -> Any:
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.relu(nn.Dense(256)(x))
            x = nn.relu(nn.Dense(256)(x))
            return nn.Dense(10)(x)

    return MLP()


def make_optimizer() -> Any:
    """Adam with a separate L2 strength per layer (coupled) and an L1 proximal step for exact zeros."""
    import optax

    import optreg

    return optax.chain(
        optreg.per_layer_decay({"Dense_0/kernel": 1e-3, "Dense_1/kernel": 1e-4, "Dense_2/kernel": 1e-3}),
        optax.adam(LEARNING_RATE),
        optreg.proximal_lq(LEARNING_RATE, 0.3, q=1.0, mask=optreg.decay_mask),
    )


def batch_indices(steps: int, batch_size: int, n: int) -> np.ndarray:
    """The same global batches on every process (same seed)."""
    rng = np.random.default_rng(0)
    return np.stack([rng.choice(n, batch_size, replace=False) for _ in range(steps)])


# ----------------------------------------------------------------------------- training


def train(
    mesh: jax.sharding.Mesh, args: argparse.Namespace, data: tuple[np.ndarray, ...], log: bool
) -> dict[str, Any]:
    """Trains on ``mesh`` (any number of devices, one or more processes); returns metrics and params."""
    import optax

    P, NamedSharding = jax.sharding.PartitionSpec, jax.sharding.NamedSharding
    x_train, y_train, x_test, y_test = data
    model, tx = make_model(), make_optimizer()

    # Parameters and optimizer state are created directly in their shards.
    abstract_params = jax.eval_shape(model.init, jax.random.key(0), x_train[:1])
    param_shardings = fsdp_shardings(abstract_params, mesh)
    params = jax.jit(model.init, out_shardings=param_shardings)(jax.random.key(0), x_train[:1])
    state_shardings = fsdp_shardings(jax.eval_shape(tx.init, params), mesh)
    opt_state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    batch_sharding = NamedSharding(mesh, P(AXIS))
    replicated = NamedSharding(mesh, P())

    def loss_fn(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    def train_step(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    step = jax.jit(
        train_step,
        in_shardings=(param_shardings, state_shardings, batch_sharding, batch_sharding),
        out_shardings=(param_shardings, state_shardings, replicated),
        donate_argnums=(0, 1),
    )

    if log:
        print(f"mesh {dict(mesh.shape)} over {mesh.size} device(s), {jax.process_count()} process(es)")
        print(f"{'parameter':<24} {'global shape':<14} {'shard on each device':<22} spec")
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            shard = leaf.addressable_shards[0].data.shape
            print(f"{name:<24} {leaf.shape!s:<14} {shard!s:<22} {leaf.sharding.spec}")
        leaves = jax.tree.leaves(opt_state)
        per_device = sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves)
        print(f"optimizer state: {sum(leaf.nbytes for leaf in leaves)} bytes in all, {per_device} per device")

    # Each process supplies its own slice of every global batch.
    processes = sorted({device.process_index for device in mesh.devices.flat})
    local = args.batch_size // len(processes)
    rank = processes.index(jax.process_index())
    mine = slice(rank * local, (rank + 1) * local)
    indices = batch_indices(args.steps, args.batch_size, len(x_train))
    losses = []
    for k, index in enumerate(indices):
        x = jax.make_array_from_process_local_data(batch_sharding, x_train[index][mine], (args.batch_size, 64))
        y = jax.make_array_from_process_local_data(batch_sharding, y_train[index][mine], (args.batch_size,))
        params, opt_state, loss = step(params, opt_state, x, y)
        if k == 0:
            compiled_at = time.perf_counter()
        if log and (k + 1) % max(1, args.steps // 5) == 0:
            print(f"step {k + 1:4d}  train loss {float(loss):.4f}")
        losses.append(loss)
    losses = [float(loss) for loss in losses]
    seconds_per_step = (time.perf_counter() - compiled_at) / max(1, args.steps - 1)

    # Test accuracy and exact zeros, computed on the shards; the results are replicated scalars.
    x_eval = jax.make_array_from_callback(x_test.shape, replicated, lambda index: x_test[index])

    @jax.jit
    def evaluate(p: Any, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        predictions = model.apply(p, x).argmax(axis=-1)
        kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0] if "kernel" in str(path[-1])]
        zeros = sum((k == 0).sum() for k in kernels)
        return predictions, zeros, sum(k.size for k in kernels)

    predictions, zeros, total = evaluate(params, x_eval)
    accuracy = float(np.mean(np.asarray(predictions) == y_test))
    return {
        "final_loss": losses[-1],
        "losses": losses,
        "test_accuracy": accuracy,
        "kernel_zeros": int(zeros),
        "kernel_weights": int(total),
        "seconds_per_step": seconds_per_step,
        "params": params,
    }


def gather(tree: Any) -> Any:
    """The whole arrays on this host (works when they span several processes)."""
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    start_jax(args)
    log = jax.process_index() == 0
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    data = load_data()
    result = train(mesh, args, data, log)
    if log:
        zeros = result["kernel_zeros"] / result["kernel_weights"]
        print(
            f"test accuracy {result['test_accuracy']:.4f}, exact zeros in kernels {zeros:.1%}, "
            f"{1e3 * result['seconds_per_step']:.2f} ms/step"
        )
    summary = {key: value for key, value in result.items() if key not in ("params", "losses")}
    if args.check:
        # The same run on this process's first device alone: same data, same order.
        single = jax.make_mesh((1,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.local_devices()[:1])
        reference = train(single, args, data, log=False)
        sharded, alone = gather(result["params"]), jax.tree.map(np.asarray, reference["params"])
        difference = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(alone)))
        scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(alone))
        summary.update(single_device_final_loss=reference["final_loss"], max_param_difference=difference)
        if log:
            print(
                f"one device: final loss {reference['final_loss']:.6f} vs {result['final_loss']:.6f} sharded; "
                f"largest parameter difference {difference:.2e} (largest parameter {scale:.2f})"
            )
        if not difference <= 1e-4 * max(1.0, scale):
            raise SystemExit(f"sharded and single-device runs differ by {difference}")
    if args.json and log:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
