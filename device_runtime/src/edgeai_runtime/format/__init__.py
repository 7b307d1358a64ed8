"""The artifact format, which the controller and the device share: errors, manifests, keys, artifacts, delta readers."""
