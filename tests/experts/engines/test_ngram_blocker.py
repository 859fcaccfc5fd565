"""The no-repeat rule of the constrained sampler, on token ids alone (no model)."""

import pytest
import torch

from experts.engines.constrained import NgramBlocker


def _feed(blocker, prompt, tokens):
    ids = torch.tensor([prompt])
    blocker.observe(ids)  # the first call marks where the output starts
    for t in tokens:
        ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
        blocker.observe(ids)


def test_bans_the_token_that_would_repeat_a_run_of_the_output():
    b = NgramBlocker(rows=1, n=3)
    _feed(b, [7, 8, 9], [1, 2, 3, 1, 2])
    assert b.banned(0) == [3]  # "1 2 3" was written: after "1 2", 3 would repeat it


def test_the_prompt_does_not_count():
    b = NgramBlocker(rows=1, n=3)
    _feed(b, [1, 2, 3, 1], [2])
    assert b.banned(0) == []  # "1 2 3" is in the prompt, which the model may copy


def test_rows_are_independent_and_n_is_checked():
    b = NgramBlocker(rows=2, n=2)
    ids = torch.tensor([[0], [0]])
    b.observe(ids)
    for step in ([5, 6], [6, 6]):  # row 0 writes 5 6, row 1 writes 6 6
        ids = torch.cat([ids, torch.tensor([[step[0]], [step[1]]])], dim=1)
        b.observe(ids)
    assert b.banned(0) == [] and b.banned(1) == [6]
    with pytest.raises(ValueError):
        NgramBlocker(rows=1, n=1)
