"""rnn_jax.distributed within one process: the batch builders give the rows they are asked
for, on the mesh, and the same values as without one; bad arguments are refused up front.
(Several real processes: tests/test_distributed.py.)"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rnn_jax import distributed
from rnn_jax.train import evaluate, example_mask, make_mesh


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((23, 3, 2)).astype(np.float32), "y": np.arange(23)}


def test_take_on_a_mesh_equals_take_on_the_host(arrays):
    mesh = make_mesh(1)
    rows = np.array([5, 0, 22, 7])
    host = distributed.take(arrays, rows)
    placed = distributed.take(arrays, rows, mesh)
    for key in arrays:
        np.testing.assert_array_equal(host[key], arrays[key][rows])
        assert placed[key].sharding == NamedSharding(mesh, P("data"))
        np.testing.assert_array_equal(np.asarray(placed[key]), host[key])


def test_eval_batches_cover_the_split_once_with_a_mask(arrays):
    for mesh in (None, make_mesh(1)):
        batches = distributed.eval_batches(arrays, 10, mesh)
        assert len(batches) == 3  # 23 = 10 + 10 + 3 real rows
        masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
        ys = np.concatenate([np.asarray(b["y"]) for b in batches])
        np.testing.assert_array_equal(masks, np.arange(30) < 23)
        np.testing.assert_array_equal(ys[:23], arrays["y"])

        def metric_fn(params, batch):
            mask = example_mask(batch)
            return {"y": (batch["y"] * mask).sum(), "count": mask.sum()}

        result = evaluate(metric_fn, {}, batches, mesh=mesh)
        assert result == {"y": arrays["y"].mean(), "count": 23.0}


def test_global_batch_asks_only_for_whole_shards():
    asked = []

    def fetch(rows):
        asked.append(rows)
        return {"r": rows * 2}

    batch = distributed.global_batch(fetch, 6, make_mesh(1))
    assert len(asked) == 1 and list(asked[0]) == list(range(6))
    np.testing.assert_array_equal(np.asarray(batch["r"]), np.arange(6) * 2)


def test_bad_arguments_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="together"):
        distributed.initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    assert distributed.is_main_process() and jax.process_count() == 1
    distributed.sync("alone")  # a no-op in one process


def test_readme_all_reduce_sizes_are_the_classifiers_gradient_bytes():
    """The README's table of bytes all-reduced per step: float32 gradients of the row-MNIST
    classifier, i.e. 4 x its parameter count."""
    import re
    from pathlib import Path

    import rnn_jax as rj
    from rnn_jax.models import classifier

    assert rj.count_params(classifier(rj.lstm, 128, 10).init(jax.random.key(0), 28)) == 81_674
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    names = {"tanh RNN": "simple", "LSTM": "lstm", "GRU": "gru"}
    rows = re.findall(r"^\| (tanh RNN|LSTM|GRU) \| ([\d,]+) params, ([\d.]+) kB \| "
                      r"([\d,]+) params, ([\d.]+) MB \|$", readme, re.M)  # fmt: skip
    assert [r[0] for r in rows] == list(names)
    for name, small, small_kb, big, big_mb in rows:
        for hidden, count, size, unit in ((128, small, small_kb, 1e3), (1024, big, big_mb, 1e6)):
            init = classifier(getattr(rj, names[name]), hidden, 10).init
            shapes = jax.eval_shape(lambda k, init=init: init(k, 28), jax.random.key(0))
            num = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))  # no compute
            assert num == int(count.replace(",", "")), (name, hidden)
            decimals = len(size.partition(".")[2])  # as rounded in the README
            assert round(4 * num / unit, decimals) == float(size)
