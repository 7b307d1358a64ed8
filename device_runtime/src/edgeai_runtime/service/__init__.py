"""The on-device inference service: KServe v2 over HTTP, the runtime backends, the load gate, metrics."""
