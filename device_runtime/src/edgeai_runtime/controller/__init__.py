"""The controller side: fleet keys, packing, making deltas, publishing the registry, reading the rollout outcomes
that pull-mode devices report over MQTT. Nothing on the device imports it."""
