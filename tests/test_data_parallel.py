"""Data-parallel training over 4 (fake CPU) devices matches single-device training.

XLA_FLAGS must be set before jax is first imported, so the multi-device part runs
in a subprocess with ``--xla_force_host_platform_device_count=4``.

Tolerance: float32 parameters after 8 RMSProp steps agree to rtol=1e-5,
atol=1e-6. They are not bitwise equal because the sharded gradient is summed
across devices in a different order.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import train as tr

REPO = Path(__file__).resolve().parents[1]
NUM_DEVICES = 4

SCRIPT = textwrap.dedent(
    """
    import json, math, sys
    import jax, jax.numpy as jnp, numpy as np
    from rnn_jax import train as tr

    assert jax.device_count() == 4, jax.devices()
    out_dir = sys.argv[1]
    IN, HIDDEN, CLASSES, STEPS, BATCH = 8, 16, 3, 8, 32
    teacher = np.random.default_rng(1234).normal(size=(IN, CLASSES))

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (IN, HIDDEN)) / math.sqrt(IN),
                "b1": jnp.zeros((HIDDEN,)),
                "w2": jax.random.normal(k2, (HIDDEN, CLASSES)) / math.sqrt(HIDDEN),
                "b2": jnp.zeros((CLASSES,))}

    def logits_fn(params, x):
        return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

    def loss_fn(params, batch, rng):
        # Gaussian input noise uses the rng, whose values must not depend on sharding.
        x = batch["x"] + 0.05 * jax.random.normal(rng, batch["x"].shape)
        logits = logits_fn(params, x)
        return tr.softmax_cross_entropy(logits, batch["y"]), {
            "accuracy": tr.accuracy(logits, batch["y"])}

    def metric_fn(params, batch):
        logits = logits_fn(params, batch["x"])
        mask = tr.example_mask(batch)
        ce = tr.optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        return {"loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}

    def batch_fn(step, n=BATCH):
        rng = np.random.default_rng([0, step])
        x = rng.normal(size=(n, IN)).astype(np.float32)
        return {"x": x, "y": np.argmax(x @ teacher, -1).astype(np.int32)}

    opt = tr.default_optimizer(1e-2, clip_norm=1.0)
    key = jax.random.key(0)
    info = {}
    results = {}
    for name, mesh in [("single", None), ("sharded", tr.make_mesh())]:
        state = tr.TrainState.create(init(key), opt, jax.random.key(1))
        if mesh is not None:
            state = tr.replicate(state, mesh)
            sharded = tr.shard_batch(batch_fn(0), mesh)
            info["batch_sharding_devices"] = len(sharded["x"].sharding.device_set)
            info["batch_shard_shapes"] = sorted(
                {tuple(s.data.shape) for s in sharded["x"].addressable_shards})
        step = tr.make_train_step(loss_fn, opt, mesh=mesh)
        losses = []
        for s in range(STEPS):
            state, metrics = step(state, batch_fn(s))
            losses.append(float(metrics["loss"]))
        results[name] = state
        info[name + "_losses"] = losses
        if mesh is not None:
            leaf = state.params["w1"]
            info["param_sharding_devices"] = len(leaf.sharding.device_set)
            info["param_spec"] = str(leaf.sharding.spec)
            info["param_fully_replicated"] = bool(leaf.sharding.is_fully_replicated)
            info["opt_state_devices"] = sorted(
                {len(x.sharding.device_set) for x in jax.tree.leaves(state.opt_state)})
            info["rng_devices"] = len(state.rng.sharding.device_set)
            info["metrics_devices"] = len(metrics["loss"].sharding.device_set)
            try:
                step(state, batch_fn(0, n=30))
                info["indivisible_error"] = None
            except ValueError as e:
                info["indivisible_error"] = str(e)
            # a 101-example split, padded batches of 16, evaluated sharded
            data = batch_fn(999, n=101)
            def batches():
                for i in range(0, 101, 16):
                    yield tr.pad_batch({k: v[i:i + 16] for k, v in data.items()}, 16)
            info["eval_sharded"] = tr.evaluate(metric_fn, state.params, batches(), mesh=mesh)
            info["eval_single"] = tr.evaluate(
                metric_fn, jax.device_get(state.params), batches())

    # An RNN classifier (2-layer LSTM, hand-written gradient: a custom_vjp inside lax.scan)
    # on padded sequences: lengths are a batch leaf, split over the devices with the rest.
    import rnn_jax as rj
    from rnn_jax.models import classifier
    T, I = 6, 3
    model = classifier(rj.lstm, hidden_size=8, num_classes=CLASSES, num_layers=2,
                       gradient="manual")

    def rnn_loss(params, batch, rng):
        logits = model.apply(params, batch["x"], lengths=batch["lengths"])
        return tr.softmax_cross_entropy(logits, batch["y"]), {}

    rng = np.random.default_rng(1)  # one batch, fitted for a few steps: the loss must drop
    rnn_batch = {"x": rng.normal(size=(BATCH, T, I)).astype(np.float32),
                 "y": rng.integers(0, CLASSES, BATCH).astype(np.int32),
                 "lengths": rng.integers(1, T + 1, BATCH).astype(np.int32)}

    rnn_params = {}
    for name, mesh in [("single", None), ("sharded", tr.make_mesh())]:
        state = tr.TrainState.create(model.init(jax.random.key(2), I), opt, jax.random.key(3))
        if mesh is not None:
            state = tr.replicate(state, mesh)
        step = tr.make_train_step(rnn_loss, opt, mesh=mesh)
        losses = []
        for s in range(4):
            state, metrics = step(state, rnn_batch)
            losses.append(float(metrics["loss"]))
        info["rnn_" + name + "_losses"] = losses
        info["rnn_" + name + "_devices"] = len(state.params["readout"]["w"].sharding.device_set)
        flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
        rnn_params.update({f"rnn_{name}/{jax.tree_util.keystr(p)}": np.asarray(v)
                           for p, v in flat})

    np.savez(out_dir + "/params.npz", **rnn_params,
             **{f"{n}/{k}": np.asarray(v) for n in results for k, v in results[n].params.items()})
    info["rng_equal"] = bool(np.array_equal(jax.random.key_data(results["single"].rng),
                                            jax.random.key_data(results["sharded"].rng)))
    info["steps"] = [int(results[n].step) for n in results]
    print(json.dumps(info))
    """
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out / "params.npz") as f:
        params = {k: f[k] for k in f.files}
    return info, params


def test_sharded_training_matches_single_device(run):
    info, params = run
    assert info["steps"] == [8, 8]
    for name in ["w1", "b1", "w2", "b2"]:
        np.testing.assert_allclose(
            params[f"sharded/{name}"], params[f"single/{name}"], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(info["sharded_losses"], info["single_losses"], rtol=1e-5)
    # the rng is advanced identically (it does not depend on the sharding)
    assert info["rng_equal"]
    # and the run really trained
    assert info["single_losses"][-1] < info["single_losses"][0]


def test_sharded_rnn_classifier_with_manual_gradient_and_lengths_matches_single_device(run):
    """The MLP above has no scan: this is the hand-written BPTT (custom_vjp inside lax.scan)
    under a Mesh, with per-example lengths split over the devices with the batch."""
    info, params = run
    names = sorted(k.removeprefix("rnn_single/") for k in params if k.startswith("rnn_single/"))
    assert len(names) == 2 * 3 + 2  # two LSTM layers' w_x, w_h, b and the readout's w, b
    assert info["rnn_sharded_devices"] == NUM_DEVICES and info["rnn_single_devices"] == 1
    for name in names:
        np.testing.assert_allclose(
            params[f"rnn_sharded/{name}"], params[f"rnn_single/{name}"], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(info["rnn_sharded_losses"], info["rnn_single_losses"], rtol=1e-5)
    assert info["rnn_single_losses"][-1] < info["rnn_single_losses"][0]


def test_state_is_replicated_and_batch_split_over_all_devices(run):
    info, _ = run
    assert info["param_sharding_devices"] == NUM_DEVICES
    assert info["param_fully_replicated"]
    assert info["opt_state_devices"] == [NUM_DEVICES]
    assert info["rng_devices"] == NUM_DEVICES
    assert info["metrics_devices"] == NUM_DEVICES
    assert info["batch_sharding_devices"] == NUM_DEVICES
    assert info["batch_shard_shapes"] == [[32 // NUM_DEVICES, 8]]


def test_indivisible_batch_is_rejected_with_both_numbers(run):
    info, _ = run
    msg = info["indivisible_error"]
    assert msg is not None, "batch of 30 over 4 devices should raise ValueError"
    assert "30" in msg and "4 devices" in msg


def test_sharded_evaluate_matches_single_device(run):
    info, _ = run
    assert info["eval_sharded"]["count"] == info["eval_single"]["count"] == 101
    np.testing.assert_allclose(info["eval_sharded"]["loss"], info["eval_single"]["loss"], rtol=1e-5)


def test_one_device_mesh_is_bitwise_equal_to_no_mesh():
    # In-process (one CPU device): the mesh path must not change the numerics.
    def loss_fn(params, batch, rng):
        logits = batch["x"] @ params["w"] + 0.01 * jax.random.normal(rng, (batch["x"].shape[0], 3))
        return tr.softmax_cross_entropy(logits, batch["y"]), {}

    opt = tr.default_optimizer(1e-2)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 5)).astype(np.float32), "y": rng.integers(0, 3, 8)}
    states = []
    for mesh in [None, tr.make_mesh(1)]:
        state = tr.TrainState.create({"w": jnp.ones((5, 3)) * 0.1}, opt, jax.random.key(0))
        step = tr.make_train_step(loss_fn, opt, mesh=mesh)
        for _ in range(3):
            state, _ = step(state, batch)
        states.append(np.asarray(state.params["w"]))
    np.testing.assert_array_equal(states[0], states[1])


def test_make_mesh_validates():
    assert tr.make_mesh().shape == {"data": jax.device_count()}
    with pytest.raises(ValueError, match="devices are available"):
        tr.make_mesh(jax.device_count() + 1)
