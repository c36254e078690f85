"""The in-package fake predictor is deterministic, torch-free and honours the Predictor protocol."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ecgcad.errors import ModelError
from ecgcad.model.predictor import Predictor
from ecgcad.testing.fake_predictor import FakePredictor


def test_fake_is_a_predictor_and_scores_each_ecg_independently_of_its_batch() -> None:
    fake = FakePredictor()
    assert isinstance(fake, Predictor)
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(5, 12, 5000)).astype(np.float32)
    together = fake.predict(batch)
    alone = fake.predict(batch[2:3])
    assert together[2] == alone[0]
    assert len({p.probabilities["rca"] for p in together}) == 5
    assert fake.calls == [5, 1]
    assert fake.model_version.startswith("fake-0.0.0+")


def test_fake_can_be_pinned_and_made_to_fail() -> None:
    fixed = FakePredictor(fixed={"rca": 0.5, "lm": 0.0, "lad": 0.0, "lcx": 0.0}, demonstration=True)
    (p,) = fixed.predict(np.zeros((1, 12, 5000), np.float32))
    assert p.flags["rca"] and not p.flags["lad"] and fixed.describe()["demonstration"]
    failing = FakePredictor(fail_with=ModelError("boom"))
    with pytest.raises(ModelError, match="boom"):
        failing.predict(np.zeros((1, 12, 5000), np.float32))
    with pytest.raises(ModelError, match="max_batch"):
        FakePredictor(max_batch=2).predict(np.zeros((3, 12, 5000), np.float32))


def test_fake_does_not_import_torch() -> None:
    code = "import sys, ecgcad.testing.fake_predictor; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
