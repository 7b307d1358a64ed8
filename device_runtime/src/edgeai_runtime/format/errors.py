"""The base of the errors the device runtime raises on purpose.

Every such error carries a stable ``reason`` code (the CLI prints it as ``reason``; callers and
tests match on it, never on the message) and a ``result``: what happened before the failure, for
the caller to report (``changed`` among it when the device did change). ``str()`` says what and
why, naming the thing concerned. Each error keeps the built-in base it always had (ValueError,
RuntimeError, LookupError ...) beside this one, so that nothing that caught it before misses it now.

The codes of the classes (a raise may name a finer one, such as ``delta_checksum`` or ``tls``):

================================  ======================  =========================================
class                             default ``reason``      raised for
================================  ======================  =========================================
``keys.ArtifactError``            (always given)          an artifact, key or key slot refused
``manifest.ManifestError``        ``bad_manifest``        a manifest that does not parse or check
``modelfile.ModelFileError``      ``bad_model``           a model file ``model init`` cannot describe
``config.ConfigError``            ``bad_config``          a runtime.json that does not parse or check
``config.RootMissing``            ``root_missing``        a device root that does not exist
``store.StoreError``              ``store``               the model store refuses or fails
``store.DiskFull``                ``disk_full``           no room, naming the filesystem
``plan.PlanRefused``              (always given)          what is wanted cannot be done
``ota.UpdateFailed``              ``update_failed``       an update ended with the previous state back
``ota.DeltaFailed``               (always given)          a delta gives no artifact
``journal.HistoryError``          ``history_failed``      the history database fails
``outbox.OutboxError``            ``outbox``              the telemetry outbox fails (or ``bad_record``)
``outbox.OutboxRefused``          ``outbox_refused``      a record not queued: ``disk_low``, ``disk_full``,
                                                          ``outbox_full``, ``record_too_large``
``mqtt_sync.SyncFailed``          ``sync``                the broker unreachable, refusing or dropping
                                                          (``tls``, ``connect``, ``dropped``, ``ack_timeout``)
``outcomes.OutcomesError``        ``outcomes``            the controller's outcome reader: the broker or
                                                          its spool fails (``tls``, ``connect``, ``refused``,
                                                          ``subscribe``, ``spool``, ``busy``, ``usage``)
``readiness.ReadinessError``      ``bad_readiness``       a maintenance window or defer hook setting
                                                          that cannot be used
``gate.GateFailed``               ``gate``                a version fails its gate
``agent.RegistryError``           (always given)          the pull registry fails or is refused
``updates.RolloutBlockError``     ``bad_rollout``         an update document's rollout block that does not
                                                          check (the agent refuses the document as ``format``)
``client.ServiceError``           ``service``             the service answers with an error
``client.ServiceDown``            ``service_down``        the service does not answer
``serving.ModelNotFound``         ``not_found``           a model or version the service lacks
``backends.BackendUnavailable``   ``backend_unavailable`` a runtime backend missing here
``backends.ModelLoadError``       ``load``                a backend cannot load a model
``batching.Overloaded``           ``overloaded``          the request queue is full
``v2.V2Error``                    ``bad_request``         a KServe v2 request that does not check
``cli.CommandFailed``             ``usage``               a CLI call with arguments that do not fit
================================  ======================  =========================================
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional


class EdgeAIError(Exception):
    """An operation of the device runtime was refused or failed. Subclasses set ``default_reason``."""

    default_reason = "failed"

    def __init__(self, message: str = "", reason: Optional[str] = None,
                 result: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(message)
        self.reason: str = reason or self.default_reason
        self.result: Dict[str, Any] = result if isinstance(result, dict) else dict(result or {})
