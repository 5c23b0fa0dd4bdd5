"""A root request's sampling, decided by polyroute for ``sample_ratio`` as the SDK's
``ParentBased(TraceIdRatioBased)`` decides it (without the SDK's result object)."""

from __future__ import annotations

from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind

from polyroute.router.observe import RequestLabels, RequestStart
from polyroute.telemetry.config import TelemetryConfig
from polyroute.telemetry.pipeline import Pipeline


def test_a_root_requests_sampling_is_the_sdk_samplers() -> None:
    start = RequestStart("r", RequestLabels(), "chat", "m", {}, 0.0)
    for ratio in (0.0, 0.25, 0.5, 1.0):
        config = TelemetryConfig(otlp_endpoint="http://127.0.0.1:9", sample_ratio=ratio)
        pipeline = Pipeline(config)
        try:
            decided = []
            for _ in range(400):
                trace = pipeline.watch(start)
                kind = SpanKind.INTERNAL
                sdk = pipeline.sampler.should_sample(None, trace.trace_id, "chat m", kind)
                assert trace.sampled == (sdk.decision is Decision.RECORD_AND_SAMPLE)
                decided.append(trace.sampled)
            if 0.0 < ratio < 1.0:
                assert sorted(set(decided)) == [False, True]
            else:
                assert set(decided) == {ratio == 1.0}
        finally:
            pipeline.shutdown()
