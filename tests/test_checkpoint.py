"""Checkpoint round trip: model (incl. momentum and queues), optimizer, step, RNG states."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rasa.engine.checkpoint import (
    load_checkpoint,
    rank_rng_state,
    restore,
    rng_state,
    save_checkpoint,
    save_model_checkpoint,
    set_rng_state,
)
from rasa.errors import DataError


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("queue", torch.randn(2, 5))


def _draws(gen: torch.Generator) -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(1)),
            float(torch.rand(1, generator=gen)))  # fmt: skip


def test_rng_state_round_trip_restores_every_stream():
    gen = torch.Generator().manual_seed(7)
    state = rng_state(gen)
    first = _draws(gen)
    set_rng_state(state, gen)
    assert _draws(gen) == first


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    model.queue.add_(1.0)
    gen = torch.Generator().manual_seed(3)
    save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, step=5, epoch=1, step_in_epoch=2,
        config={"name": "x"}, generator=gen, extra={"record": {"best": None}},
    )  # fmt: skip
    expected = _draws(gen)

    other = Tiny()
    opt2 = torch.optim.AdamW(other.parameters(), lr=0.1)
    gen2 = torch.Generator().manual_seed(99)
    state = load_checkpoint(tmp_path / "c.pt")
    restore(state, model=other, optimizer=opt2, generator=gen2)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (5, 1, 2)
    assert state["config"] == {"name": "x"} and state["record"] == {"best": None}
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert _draws(gen2) == expected


def test_model_only_checkpoint_and_bad_files(tmp_path):
    model = Tiny()
    save_model_checkpoint(tmp_path / "best.pt", model=model, config={}, record={"epoch": 1})
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["record"] == {"epoch": 1} and "optimizer" not in state
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a rasa training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_every_rank_restores_its_own_random_states(tmp_path):
    model, gen = Tiny(), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters())
    states = []
    for rank in range(2):  # what all_gather_object collects under DDP
        torch.manual_seed(10 + rank)
        gen.manual_seed(20 + rank)
        states.append(rng_state(gen))
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, step=1, epoch=0,
                    step_in_epoch=1, config={}, generator=gen, rng_per_rank=states)  # fmt: skip
    state = load_checkpoint(tmp_path / "c.pt")
    draws = []
    for rank in range(3):  # rank 2: a world larger than the saved one gets rank 0's states
        restore(state, model=model, generator=gen, rank=rank)
        draws.append(_draws(gen))
    assert draws[0] != draws[1] and draws[2] == draws[0]
    torch.manual_seed(11)
    assert draws[1][2] == float(torch.rand(1))  # rank 1's own torch stream
    # a checkpoint of an older version (rank 0's states only) still loads on every rank
    old = {k: v for k, v in state.items() if k != "rng_per_rank"}
    assert rank_rng_state(old, 1) is old["rng"]
    restore(old, model=model, generator=gen, rank=1)
    assert _draws(gen) == draws[0]
