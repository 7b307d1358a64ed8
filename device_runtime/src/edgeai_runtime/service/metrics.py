"""Prometheus metrics, with the design notes' names, in the process's one registry object."""
from __future__ import annotations

import os
from typing import Tuple

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

# Latency buckets for edge inference: 100 µs to 10 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

#: The labels (model, version) that every request for a model or version missing from the store counts
#: under. Only models in the store get labels of their own: a client that makes up names cannot grow
#: the registry (and /metrics) without bound. Store names never start with "_".
UNKNOWN_MODEL = ("_unknown", "")


def error_reason(status: int) -> str:
    """The ``reason`` label of a failed inference request, from the HTTP status it was answered with."""
    if status == 404:
        return "not_found"
    if status == 503:
        return "not_ready"
    return "bad_request" if status < 500 else "backend"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "version")
        self.inferences = Counter("edge_ai_inferences", "Inference requests answered, by model and version.",
                                  labels, registry=self.registry)
        self.errors = Counter("edge_ai_inference_errors", "Inference requests that failed, by model, version "
                              "and reason (bad_request, overloaded, backend, not_found, not_ready); requests "
                              "for a model or version the store lacks count under model=\"_unknown\".",
                              labels + ("reason",), registry=self.registry)
        self.duration = Histogram("edge_ai_inference_duration_seconds", "Time to answer an inference request, "
                                  "queueing included.", labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("edge_ai_batch_size", "Rows per batch run on the backend.", labels,
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.accuracy = Gauge("edge_ai_model_accuracy", "Accuracy measured on the validation set when the "
                              "version was gated (absent when it has no validation set).", labels,
                              registry=self.registry)
        self.memory = Gauge("edge_ai_memory_usage_bytes", "Resident memory of the inference service.",
                            registry=self.registry)
        self.memory.set_function(lambda: psutil.Process(os.getpid()).memory_info().rss)
        self.active = Gauge("edge_ai_model_active", "1 for the version serving each model, 0 for a loaded "
                            "previous version.", labels, registry=self.registry)
        self.swaps = Counter("edge_ai_model_swaps", "Blue-green switches of the serving version.", ("model",),
                             registry=self.registry)

    def exposition(self, accept: str) -> Tuple[bytes, str]:
        """Render for a scrape, in the format the Accept header asks for."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
