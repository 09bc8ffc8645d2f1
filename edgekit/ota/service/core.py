"""The OTA service's logic, without HTTP: publish, roll out, halt, resume, roll back, take reports.

The registry (SQLite, or PostgreSQL) is the source of truth; the signed TUF metadata is a function
of it. Every change runs under the registry's writer lock in three steps: store the files
(content-addressed, idempotent), record the change in the registry, then re-sign the targets it
touches. A crash between the steps is repaired by :meth:`OtaService.resync`, which the service runs
at start: it re-signs whatever the metadata lacks, so a restart mid-rollout changes nothing a device
sees except the timestamp.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BundleError, OtaRequestError
from edgekit.ota import contract
from edgekit.ota.service.backends import open_backends
from edgekit.ota.service.database import Release, SqlRegistry
from edgekit.ota.service.delta_targets import make_deltas
from edgekit.ota.service.fleet import Fleet, check_plausible
from edgekit.ota.service.intake import same_files, unpack_directories
from edgekit.ota.service.repository import Expiry, Repository, canonical, custom_of, load_signers
from edgekit.ota.service.storage import Storage
from edgekit.ota.telemetry import Batch

log = logging.getLogger("edgekit.ota")
OUTCOMES = ("installed", "failed", "rolled_back")
FULL = contract.BUCKETS


@dataclass(frozen=True)
class HaltPolicy:
    """Halt a rollout when at least ``min_reports`` devices reported on the current release and the
    share that failed (failed or rolled back) reaches ``failure_rate`` (basis points of 10000)."""

    failure_rate_bp: int = 2000
    min_reports: int = 5


class OtaService:
    """Publishing, rollouts and reports over a registry, a storage and the online signing keys."""

    def __init__(self, storage: Storage, registry: SqlRegistry, signers: dict[str, Any], *, expiry: Expiry | None = None,
                 halt_policy: HaltPolicy | None = None, events: Callable[[str, dict[str, Any]], None] | None = None):
        self.storage = storage
        self.registry = registry
        self.repo = Repository(storage, signers, expiry)
        self.halt_policy = halt_policy or HaltPolicy()
        self.fleet = Fleet(registry)
        self._listeners: list[Any] = [events] if events else []
        self._stop = threading.Event()

    @classmethod
    def embedded(cls, data_dir: str | Path | None, keys_dir: str | Path, *, registry_url: str | None = None,
                 storage_url: str | None = None, **kwargs: Any) -> OtaService:
        """The service on its backends (see :func:`open_backends`; default: all under ``data_dir``)."""
        storage, registry = open_backends(data_dir, registry_url, storage_url)
        return cls(storage, registry, load_signers(keys_dir), **kwargs)

    def subscribe(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``listener(name, fields)`` on every service event (published, rollout, halted, report...)."""
        self._listeners.append(listener)

    def event(self, name: str, **fields: Any) -> None:
        log.info("%s", name, extra={"event": name, **fields})
        for listener in self._listeners:
            listener(name, fields)

    # -- the signed view of the registry ----------------------------------------------------------

    def _state(self, current: Release) -> contract.ChannelState:
        stable = self.registry.release(current.model, current.channel, current.stable_release) \
            if current.stable_release is not None else None
        files = {str(r.release): [f["file"] for f in r.files]
                 for r in self.registry.releases(current.model, current.channel)}
        return contract.ChannelState(
            model=current.model, channel=current.channel,
            current=contract.ReleaseRef(current.release, current.version), rollout=self._rollout(current),
            stable=contract.ReleaseRef(stable.release, stable.version) if stable else None,
            rollback_of=current.rollback_of, files=files)

    @staticmethod
    def _rollout(r: Release) -> contract.Rollout:
        return contract.Rollout(r.basis_points, f"{r.model}/{r.channel}/{r.release}", r.halted)

    def _target_files(self, r: Release) -> dict[str, Any]:
        from tuf.api.metadata import TargetFile

        out = {}
        for f in r.files:
            path = contract.target_path(r.model, r.channel, r.release, f["file"])
            custom = contract.descriptor(model=r.model, channel=r.channel, version=r.version, release=r.release,
                                      file=f["file"], kind=f["kind"], size=f["size"], rollout=self._rollout(r),
                                      rollback_of=r.rollback_of, artifact=f.get("artifact"), delta=f.get("delta"))
            out[path] = TargetFile(f["size"], {"sha256": f["sha256"]}, path, {"custom": custom})
        return out

    def _sign(self, r: Release, *, files_too: bool) -> None:
        """Re-sign the channel state (and the release's file targets) from the registry."""
        state = self._state(r)
        custom = state.to_custom()
        changes: dict[str, Any] = {contract.channel_path(r.model, r.channel): (canonical(custom), custom)}
        if files_too:
            changes.update(self._target_files(r))
        self.repo.update(changes)

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, model: str, channel: str, bundle_dir: Path, *, basis_points: int = 0) -> Release:
        """Publish a verified bundle as the channel's next release, rolled out to ``basis_points``/10000.

        Raises:
            OtaRequestError: A bad name or share; BundleError: not a bundle, or damaged.
        """
        from edgekit.bundle import read_bundle

        contract.check_name(model)
        contract.check_name(channel, "channel name")
        _check_points(basis_points)
        unpack_directories(bundle_dir)
        bundle = read_bundle(bundle_dir)  # sizes and sha256 of every file (a directory's too)
        manifest = bundle.manifest
        if manifest.reference is None:
            raise BundleError(f"{bundle_dir} has no reference samples (reference.npz), so devices could not smoke-test "
                              "it before switching to it; convert it again with this edgekit")
        names = ["bundle.json", manifest.reference.file]
        files: list[dict[str, Any]] = []
        for name in names:
            files.append({"file": contract.check_file_name(name), "kind": "manifest" if name == "bundle.json" else "reference"})
        packed: dict[str, bytes] = {}  # directory artifacts (.mlpackage), delivered as their deterministic tar
        for art in manifest.artifacts:
            entry: dict[str, Any] = {"target": art.target, "format": art.format, "precision": art.precision}
            name = contract.check_file_name(art.file)
            if (bundle.path / art.file).is_dir():
                name = contract.packed_name(art.file)
                packed[name] = contract.pack_directory(bundle.path / art.file)
                entry.update(packed_from=art.file, directory_sha256=art.sha256, directory_size=art.size_bytes)
            files.append({"file": name, "kind": "artifact", "artifact": entry})
        from tuf.api.metadata import TargetFile

        with self.registry.lock():
            latest = self.registry.latest(model, channel)
            if latest is not None and same_files(latest.files, bundle.path, files, packed):
                # a retried publish (the answer was lost to a crash or a cut connection): the release exists
                self.event("publish_repeated", model=model, channel=channel, release=latest.release)
                latest.already_published = True
                return latest
            number = latest.release + 1 if latest else 1
            data_of: dict[str, bytes] = {}
            for f in files:
                data = data_of[f["file"]] = packed[f["file"]] if f["file"] in packed else (bundle.path / f["file"]).read_bytes()
                info = TargetFile.from_data(contract.target_path(model, channel, number, f["file"]), data, ["sha256"])
                f["size"], f["sha256"] = info.length, info.hashes["sha256"]
                key = contract.target_key(info.path, f["sha256"])
                if self.storage.stat(key) is None:
                    self.storage.put(key, data)
            files += make_deltas(self.storage, model, channel, number, files, data_of, self._delta_bases(latest))
            release = Release(model, channel, number, manifest.version, files, basis_points,
                              stable_release=_stable_after(latest))
            self.registry.add_release(release)
            self._sign(release, files_too=True)
        self.event("published", model=model, channel=channel, release=number, version=manifest.version,
                   basis_points=basis_points)
        return release

    def _delta_bases(self, latest: Release | None) -> list[Release]:
        """The releases devices most likely hold when a new one comes: the latest and the stable one."""
        if latest is None:
            return []
        stable = self.registry.release(latest.model, latest.channel, latest.stable_release) if latest.stable_release else None
        return [latest] + ([stable] if stable is not None and stable.release != latest.release else [])

    def _current(self, model: str, channel: str) -> Release:
        contract.check_name(model)
        contract.check_name(channel, "channel name")
        current = self.registry.latest(model, channel)
        if current is None:
            raise OtaRequestError(f"model {model!r} has no release on channel {channel!r}; publish one first", status=404)
        return current

    def set_rollout(self, model: str, channel: str, basis_points: int) -> Release:
        """Set the current release's share of the fleet (it only grows the set of devices a bucket admits)."""
        _check_points(basis_points)
        with self.registry.lock():
            current = self._current(model, channel)
            if current.halted:
                raise OtaRequestError(f"release {current.release} of {model}/{channel} is halted "
                                      f"({current.halted_reason}); resume it before changing its rollout", status=409)
            current.basis_points = basis_points
            self.registry.update_release(current)
            self._sign(current, files_too=True)
        self.event("rollout", model=model, channel=channel, release=current.release, basis_points=basis_points)
        return current

    def halt(self, model: str, channel: str, reason: str = "halted by an operator", *, auto: bool = False) -> Release:
        """Stop the current release from reaching more devices (those that have it keep it)."""
        with self.registry.lock():
            current = self._current(model, channel)
            if not current.halted:
                current.halted, current.halted_reason = True, reason[:500]
                self.registry.update_release(current)
                self._sign(current, files_too=True)
        self.event("halted", model=model, channel=channel, release=current.release, reason=reason, auto=auto)
        return current

    def resume(self, model: str, channel: str) -> Release:
        with self.registry.lock():
            current = self._current(model, channel)
            if current.halted:
                current.halted, current.halted_reason = False, None
                self.registry.update_release(current)
                # the operator has seen the failures so far: an automatic halt counts the ones after this
                counts = self.registry.outcomes(model, channel, current.release)
                self.registry.set_halt_baseline(model, channel, current.release,
                                                counts.get("failed", 0) + counts.get("rolled_back", 0), sum(counts.values()))
                self._sign(current, files_too=True)
        self.event("resumed", model=model, channel=channel, release=current.release)
        return current

    def rollback(self, model: str, channel: str, to_release: int | None = None) -> Release:
        """A new release (a higher counter, so devices accept it) delivering an earlier release's files
        to the whole channel: the signed way back. Default: the stable release before the current one."""
        with self.registry.lock():
            current = self._current(model, channel)
            target_number = to_release if to_release is not None else current.stable_release
            if target_number is None:
                raise OtaRequestError(f"{model}/{channel} has no earlier fully rolled-out release to roll back to; "
                                      "name one with to_release", status=409)
            old = self.registry.release(model, channel, target_number)
            if old is None or old.release >= current.release:
                raise OtaRequestError(f"release {target_number} is not an earlier release of {model}/{channel}", status=409)
            number = current.release + 1
            files = [dict(f) for f in old.files if f["kind"] != "delta"]  # old's deltas rebuild it from older ones
            for f in files:
                src = contract.target_key(contract.target_path(model, channel, old.release, f["file"]), f["sha256"])
                dst = contract.target_key(contract.target_path(model, channel, number, f["file"]), f["sha256"])
                if self.storage.stat(dst) is None:
                    self.storage.put(dst, self.storage.get(src))
            release = Release(model, channel, number, old.version, files, FULL, stable_release=old.stable_release,
                              rollback_of=current.release)
            self.registry.add_release(release)
            self._sign(release, files_too=True)
        self.event("rolled_back", model=model, channel=channel, release=number, to_version=old.version,
                   undoes=current.release)
        return release

    # -- devices --------------------------------------------------------------------------------

    def report(self, device_id: str, model: str, channel: str, release: int, outcome: str,
               detail: str = "") -> tuple[Release, bool]:
        """Record an enrolled device's outcome for a release; halt the rollout when failures pass the
        policy. Only devices the release was offered to count (its rollout admits them, or it went to
        the whole channel); a report from any other device changes nothing. One outcome per device
        and release: a repeated or replayed report replaces, never adds. Returns the release and
        whether the report counted.
        """
        contract.check_device_id(device_id)
        if outcome not in OUTCOMES:
            raise OtaRequestError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}", status=422)
        contract.check_name(model)
        contract.check_name(channel, "channel name")
        r = self.registry.release(model, channel, int(release))
        if r is None:
            raise OtaRequestError(f"{model}/{channel} has no release {release}", status=404)
        if not self._offered(r, device_id):
            self.event("report_ignored", model=model, channel=channel, release=r.release, device=device_id,
                       outcome=outcome, reason="not offered to this device")
            return r, False
        self.registry.add_report(model, channel, r.release, device_id, outcome, detail)
        self.event("report", model=model, channel=channel, release=r.release, device=device_id, outcome=outcome)
        if outcome != "installed":
            counts = self.registry.outcomes(model, channel, r.release)
            base_failed, base_total = self.registry.halt_baseline(model, channel, r.release)
            total = sum(counts.values()) - base_total
            failed = counts.get("failed", 0) + counts.get("rolled_back", 0) - base_failed
            policy = self.halt_policy
            latest = self.registry.latest(model, channel)
            if (latest is not None and latest.release == r.release and not r.halted
                    and total >= policy.min_reports and failed * FULL >= policy.failure_rate_bp * total):
                halted: Release = self.halt(model, channel, f"automatic: {failed} of {total} devices failed release "
                                                            f"{r.release}", auto=True)
                return halted, True
        return r, True

    def _offered(self, r: Release, device_id: str) -> bool:
        """Whether ``r`` was offered to ``device_id``: its rollout's bucket rule admits the device (a halt
        stops new offers, not past ones), or ``r`` is the stable release the others were given."""
        if contract.Rollout(r.basis_points, f"{r.model}/{r.channel}/{r.release}").includes(device_id):
            return True
        later = [x for x in self.registry.releases(r.model, r.channel) if x.stable_release == r.release]
        return any(not contract.Rollout(x.basis_points, f"{x.model}/{x.channel}/{x.release}").includes(device_id)
                   for x in later)

    def telemetry(self, device_id: str, batch: Batch) -> dict[str, Any]:
        """Take an enrolled device's telemetry batch; halt a staged rollout whose guard it breaks."""
        check_plausible(self, device_id, batch)
        self.fleet.add(batch)
        halted = []
        for model, channel in sorted({(p.model, p.channel) for p in batch.points}):
            latest = self.registry.latest(model, channel)
            if (latest is None or latest.halted or latest.basis_points >= FULL or latest.stable_release is None
                    or all(p.release != latest.release for p in batch.points)):
                continue
            reason = self.fleet.breach(latest, latest.stable_release)
            if reason:
                self.halt(model, channel, reason, auto=True)
                halted.append({"model": model, "channel": channel, "release": latest.release, "reason": reason})
        self.event("telemetry", device=device_id, points=len(batch.points))
        return {"accepted": True, "points": len(batch.points), "halted": halted}

    def fleet_status(self, model: str, channel: str) -> dict[str, Any]:
        """The channel's current release against its baseline per device class, and each release's series."""
        current = self._current(model, channel)
        baseline = current.stable_release if current.basis_points < FULL else None
        releases = sorted({current.release, *([baseline] if baseline else [])})
        comparison = self.fleet.compare(current, baseline)
        return {"model": model, "channel": channel, "halted": current.halted, "halted_reason": current.halted_reason,
                "comparison": comparison,
                "series": {str(n): self.fleet.series(model, channel, n) for n in releases},
                "series_by_class": {c["device_class"]: {str(n): self.fleet.series(model, channel, n, c["device_class"])
                                                        for n in releases} for c in comparison["classes"]}}

    # -- upkeep ---------------------------------------------------------------------------------

    def resync(self) -> int:
        """Re-sign every target whose signed form differs from the registry; how many it fixed."""
        with self.registry.lock():
            changes: dict[str, Any] = {}
            latest: dict[tuple[str, str], Release] = {}
            signed_now = self.repo.all_targets()  # every bin read once, not once per file
            for r in self.registry.releases():
                latest[(r.model, r.channel)] = r
                for path, info in self._target_files(r).items():
                    signed = signed_now.get(path)
                    if signed is None or signed.hashes != info.hashes or custom_of(signed) != info.custom:
                        changes[path] = info
            for r in latest.values():
                custom = self._state(r).to_custom()
                signed = signed_now.get(contract.channel_path(r.model, r.channel))
                if signed is None or custom_of(signed) != custom:
                    changes[contract.channel_path(r.model, r.channel)] = (canonical(custom), custom)
            if changes:
                self.repo.update(changes)
        if changes:
            self.event("resynced", fixed=len(changes))
        return len(changes)

    def keep_fresh(self, every_s: float = 60.0) -> threading.Thread:
        """A daemon thread that re-signs timestamp/snapshot/bins before they expire."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    with self.registry.lock():
                        if self.repo.refresh():
                            self.event("metadata_refreshed")
                except Exception:  # keep refreshing; the next round logs again
                    log.exception("refreshing TUF metadata failed")

        thread = threading.Thread(target=loop, name="edgekit-ota-refresh", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._stop.set()

    # -- reading --------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in self.registry.releases():
            entry = out.setdefault(r.model, {"model": r.model, "channels": {}})
            entry["channels"][r.channel] = {"release": r.release, "version": r.version, "basis_points": r.basis_points,
                                            "halted": r.halted}
        return list(out.values())

    def channel(self, model: str, channel: str) -> dict[str, Any]:
        current = self._current(model, channel)
        releases = self.registry.releases(model, channel)
        return {"state": self._state(current).to_custom(),
                "releases": [dict(r.to_dict(), outcomes=self.registry.outcomes(model, channel, r.release))
                             for r in releases]}


def _check_points(basis_points: int) -> None:
    if not isinstance(basis_points, int) or isinstance(basis_points, bool) or not 0 <= basis_points <= FULL:
        raise OtaRequestError(f"a rollout share must be 0..{FULL} basis points (0..100 percent), not {basis_points!r}",
                              status=422)


def _stable_after(latest: Release | None) -> int | None:
    """What devices outside a new release's rollout get: the latest release everyone was given."""
    if latest is None:
        return None
    if latest.basis_points >= FULL and not latest.halted:
        return latest.release
    return latest.stable_release
