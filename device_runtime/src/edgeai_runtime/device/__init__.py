"""The device side: the model store, the OTA installer and its plan, the pull agent, the service client."""
