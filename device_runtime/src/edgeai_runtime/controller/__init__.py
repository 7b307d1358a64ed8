"""The controller side: fleet keys, packing, making deltas, publishing the registry. Nothing on the device imports it."""
