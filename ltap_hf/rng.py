"""The global random number generators that data transforms draw from (Python's, NumPy's, torch's on CPU
and CUDA): read, restore, and fork them around work that must not change what training draws next."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def rng_states() -> dict:
    """The states of Python's, NumPy's and torch's (CPU, and every CUDA device's) global generators."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.random.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restores what `rng_states` read."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.random.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """Runs its body on copies of the global RNG states: whatever it draws, the draws after it are the ones
    they would have been without it."""
    states = rng_states()
    try:
        yield
    finally:
        set_rng_states(states)
