"""The OTA service (``edgekit serve``): the ``ota-server`` extra. Devices never import it.

- :mod:`~edgekit.ota.service.app`: the HTTP app (FastAPI) and its error mapping; what its routes share
  (path parameters, OpenAPI answers) in :mod:`~edgekit.ota.service.params`, its JSON-lines logs in
  :mod:`~edgekit.ota.service.logs`; the fleet routes in :mod:`~edgekit.ota.service.fleet_api`.
- :mod:`~edgekit.ota.service.fastpath`: the device paths (metadata, targets) without per-device state.
- :mod:`~edgekit.ota.service.guards`: limits on hostile input (sizes, deadlines, rates).
- :mod:`~edgekit.ota.service.core`: the service's logic without HTTP (publish, roll out, halt, reports);
  what publish takes in (an upload's folder against a published release) in :mod:`~edgekit.ota.service.intake`.
- :mod:`~edgekit.ota.service.fleet`: telemetry added up per release and device class; rollout guards.
- :mod:`~edgekit.ota.service.repository`: the TUF repository it signs.
- :mod:`~edgekit.ota.service.database`: the registry, one SQL interface (SQLite here, PostgreSQL in
  :mod:`~edgekit.ota.service.postgres`).
- :mod:`~edgekit.ota.service.storage`: where target files live, one interface (a folder here, S3 in
  :mod:`~edgekit.ota.service.s3`).
"""
