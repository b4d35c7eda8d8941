"""A tiny evaluation on the real default model: the whole path from generated samples through
namm.generate and continuation_logits to scores, memory statistics and reports."""

import pytest

from namm.evaluation import ReferenceCache, evaluate, format_tables
from namm.tasks import make_samples

pytestmark = pytest.mark.model


def test_tiny_eval_on_the_real_model(lm, tmp_path):
    samples = make_samples(["passkey"], [1024], 1, "test")
    samples += make_samples(["lm_fidelity"], [1024], 1, "test")
    refs = ReferenceCache()
    full = evaluate(lm, samples, "full", None, reference_cache=refs)
    h2o = evaluate(lm, samples, "h2o", 0.25, reference_cache=refs)

    # the full cache finds a planted fact in 1k tokens (the model does so reliably there)
    assert full.per_task["passkey"] == 1.0
    assert full.per_task["lm_fidelity"] == 1.0 and full.kl == 0.0
    assert full.kept_fraction == pytest.approx(1.0)
    # the policy really kept a quarter of the cache and held fewer bytes at its peak
    assert 0.15 <= h2o.kept_fraction <= 0.35
    assert h2o.kv_bytes_peak < full.kv_bytes_peak
    assert 0.0 <= h2o.per_task["lm_fidelity"] <= 1.0 and h2o.kl > 0.0
    assert h2o.full_score == full.score  # scored against the same, cached, full-cache answers
    assert all(s.reference == f.prediction for s, f in zip(h2o.samples, full.samples))
    table = format_tables([full, h2o])
    assert "| full | - |" in table and "| h2o | 0.25 |" in table
