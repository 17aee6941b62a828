"""PyTorch's own distributed engines train the yat layers (issue 18): DistributedDataParallel
and FSDP2 (``torch.distributed.fsdp.fully_shard``) over gloo, 2 processes on 127.0.0.1.

A small yat CNN (``YatConv2D`` then ``YatNMN``, float64) takes 3 SGD steps on 8x8 digits
(scikit-learn's ``load_digits``), a global batch of 16 per step, each rank training on its
half. Its final parameters must equal those of one process training on the whole batch:
the engines average the two half-batch gradients, which is the gradient of the global mean
loss, so only the summation order differs (float64 rounding, ``ATOL``). Three runs:

- ``ddp``: ``DistributedDataParallel`` of the model built normally (same seed on each rank);
- ``fsdp``: FSDP2, every yat layer and the root sharded over the 2 ranks (the ``(1,)``
  alpha shards unevenly: one element on rank 0, none on rank 1);
- ``fsdp_meta``: FSDP2's deferred initialisation: the model is built on the ``meta``
  device, sharded, materialised with ``to_empty(device="cpu")``, then given the reference's
  initial weights by ``set_model_state_dict(..., broadcast_from_rank0=True)``.

The ranks run in one subprocess (``python -m tests.scaling.test_torch_distributed OUT``,
the ``__main__`` block below), which holds the rendezvous store on a free port of
127.0.0.1, pins gloo to the loopback interface and starts them with
``torch.multiprocessing.spawn``; the test kills that process group if it outlives
``TIMEOUT``. Each rank saves its final full parameters; this module trains the reference in
the test process and compares.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from nmn_array.frameworks.torch import YatConv2D, YatNMN

from tests._bounded import ROOT, run_module

F64 = torch.float64
WORLD = 2
STEPS, BATCH, LR = 3, 16, 0.1
#: Final parameters of a 2-rank run vs one process: float64, the global batch's gradient
#: summed in another order; measured max |difference| about 1e-16 (docs/scaling.md).
ATOL = 1e-12
TIMEOUT = 240  # seconds for the whole subprocess (it takes about 10 s)
MODES = ("ddp", "fsdp", "fsdp_meta")


class YatCNN(torch.nn.Module):
    """``(N, 1, 8, 8)`` -> yat conv, 4 filters, stride 2 -> ``(N, 4, 4, 4)`` -> 10 yat
    neurons (the logits). Parameters in float64; ``device`` as the layers take it."""

    def __init__(self, device: Any = None) -> None:
        super().__init__()
        self.conv = YatConv2D(1, 4, 3, stride=2, padding=1, device=device, dtype=F64)
        self.head = YatNMN(64, 10, param_dtype=F64, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``STEPS * BATCH`` digits: images ``(N, 1, 8, 8)`` in [0, 1], labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    n = STEPS * BATCH
    x = torch.tensor(data.images[:n], dtype=F64).unsqueeze(1) / 16.0
    return x, torch.tensor(data.target[:n])


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, part: slice) -> list:
    """``STEPS`` SGD steps, step ``s`` on rows ``part`` of global batch ``s``; the losses."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        rows = slice(step * BATCH, (step + 1) * BATCH)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[rows][part]), y[rows][part])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as one full tensor (FSDP2's DTensor shards gathered)."""
    out = {}
    for name, p in model.named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.replace("module.", "", 1)] = p.detach().clone()
    return out


def _rank(rank: int, port: int, x: torch.Tensor, y: torch.Tensor, out: str) -> None:
    """One rank: join the group, then train the three ways and save each result."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # two ranks on two cores
    timeout = datetime.timedelta(seconds=60)
    store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=timeout)
    mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (WORLD,))
    half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)

    def shard(model: torch.nn.Module) -> torch.nn.Module:
        for layer in (model.conv, model.head, model):
            fully_shard(layer, mesh=mesh)
        return model

    def save(mode: str, model: torch.nn.Module, seconds: float, losses: list) -> None:
        result = {"params": _full(model), "seconds": seconds, "losses": losses}
        torch.save(result, Path(out) / f"{mode}_rank{rank}.pt")

    for mode in MODES:
        start = time.perf_counter()
        torch.manual_seed(0)
        if mode == "ddp":
            model: torch.nn.Module = DistributedDataParallel(YatCNN())
        elif mode == "fsdp":
            model = shard(YatCNN())
        else:
            initial = YatCNN().state_dict() if rank == 0 else {}  # only rank 0 holds it
            with torch.device("meta"):
                model = shard(YatCNN())
            model.to_empty(device="cpu")
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(model, initial, options=options)
        losses = _train(model, x, y, half)
        save(mode, model, time.perf_counter() - start, losses)
        dist.barrier()
    dist.destroy_process_group()


def _loopback() -> str:
    """The name of the loopback interface (gloo binds to the interface it is given)."""
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    raise RuntimeError(f"no loopback interface among {socket.if_nameindex()}")


def _launch(out: str) -> None:
    """The subprocess: the rendezvous store on a free port of 127.0.0.1, then the ranks."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    os.environ.update(GLOO_SOCKET_IFNAME=_loopback(), MASTER_ADDR="127.0.0.1")
    store = dist.TCPStore("127.0.0.1", 0, WORLD, is_master=True, wait_for_workers=False)
    os.environ["MASTER_PORT"] = str(store.port)
    x, y = _digits()
    mp.spawn(_rank, args=(store.port, x, y, out), nprocs=WORLD, join=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Each mode's results, one per rank; the whole run bounded by ``TIMEOUT``."""
    out = tmp_path_factory.mktemp("torch_distributed")
    module = "tests.scaling.test_torch_distributed"
    log = run_module(module, str(out), cwd=ROOT, timeout=TIMEOUT)  # kills the ranks too
    results = {m: [torch.load(out / f"{m}_rank{r}.pt") for r in range(WORLD)] for m in MODES}
    return {**results, "log": log}


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """One process, the whole global batch at each step, the same seed."""
    torch.manual_seed(0)
    model = YatCNN()
    x, y = _digits()
    losses = _train(model, x, y, slice(None))
    return {"params": _full(model), "losses": losses}


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_equal_one_process(runs: dict, reference: dict, mode: str) -> None:
    want = reference["params"]
    torch.manual_seed(0)
    initial = dict(YatCNN().named_parameters())
    for rank, result in enumerate(runs[mode]):
        got = result["params"]
        assert got.keys() == want.keys(), (mode, rank)
        for name, w in want.items():
            diff = float((got[name] - w).abs().max())
            assert diff <= ATOL, f"{mode} rank {rank}: {name} differs by {diff:.3g}"
            # the steps moved every parameter: equality is not that of two untrained models
            assert not torch.equal(w, initial[name].detach()), name
    # each rank's loss is its half batch's: their mean is the global batch's
    mean = [sum(r["losses"][s] for r in runs[mode]) / WORLD for s in range(STEPS)]
    assert max(abs(a - b) for a, b in zip(mean, reference["losses"])) <= ATOL


def test_the_replicas_agree_exactly(runs: dict) -> None:
    """Every rank ends with the same parameters, bit for bit (DDP keeps replicas in sync;
    FSDP2 gathers one sharded copy)."""
    for mode in MODES:
        first, second = (r["params"] for r in runs[mode])
        assert all(torch.equal(first[k], second[k]) for k in first), mode


def test_no_sharded_module_returns_a_view(runs: dict) -> None:
    """FSDP2 warns when a sharded module's output is a view (an in-place op on it would
    skip the all-gather of the backward); YatNMN of a 2-D input returns its own tensor."""
    assert "returned a view tensor" not in runs["log"], runs["log"][-4000:]


if __name__ == "__main__":
    _launch(sys.argv[1])
