"""Run by tests/test_distributed.py under ``python -m rnn_jax.launch``: a split of 10,001
examples (not a multiple of the batch or of the process count) evaluated with
``rnn_jax.distributed.eval_batches`` + ``rnn_jax.train.evaluate`` over every process.
Process 0 prints the global count and the means of two functions of the example ids, which
are exact only if every example is counted once."""

import argparse
import json

import numpy as np

from rnn_jax import distributed
from rnn_jax.train import evaluate, example_mask

NUM_EXAMPLES, BATCH = 10_001, 1000

p = argparse.ArgumentParser()
p.add_argument("--coordinator")
p.add_argument("--num-processes", type=int)
p.add_argument("--process-id", type=int)
args = p.parse_args()
distributed.initialize(args.coordinator, args.num_processes, args.process_id)
mesh = distributed.global_mesh()

ids = np.arange(NUM_EXAMPLES, dtype=np.int32)
batches = distributed.eval_batches({"id": ids}, BATCH, mesh)


def metric_fn(params, batch):
    mask = example_mask(batch)
    # Sums of integers below 2**24 per batch: exact in float32.
    return {
        "id": (batch["id"] * mask).sum(),
        "hash": ((batch["id"] * 7919 % 1009) * mask).sum(),
        "count": mask.sum(),
    }


result = evaluate(metric_fn, {}, batches, mesh=mesh)
if distributed.is_main_process():
    print(json.dumps({**result, "num_batches": len(batches)}), flush=True)
