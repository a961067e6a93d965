from __future__ import annotations

from typing import Any

from batchdrop import config
from batchdrop.handlers.complete import record_job_metrics
from batchdrop.observability import metrics


def test_a_completed_job_records_its_outcome_cost_and_duration() -> None:
    summary = {
        "counts": {"lines": 5, "invalid": 1, "submitted": 4, "succeeded": 3, "failed": 1},
        "batches": [{"status": "completed"}, {"status": "expired"}],
        "cost_usd": {"batch": 0.5, "realtime_equivalent": 1.0, "saved": 0.5},
        "timings": {"received_at": "2026-11-25T10:00:00.000Z", "completed_at": "2026-11-25T10:30:00.000Z"},
    }
    metrics.clear_metrics()
    try:
        record_job_metrics(summary)
        emf: dict[str, Any] = dict(metrics.serialize_metric_set())
    finally:
        metrics.clear_metrics()
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "batchdrop"
    assert emf[config.REQUESTS_SUCCEEDED] == [3.0]
    assert emf[config.REQUESTS_FAILED] == [1.0]
    assert emf[config.REQUESTS_EXPIRED] == [1.0]
    assert emf[config.COST_SAVED_USD] == [0.5]
    assert emf[config.TIME_TO_COMPLETE] == [1800.0]
