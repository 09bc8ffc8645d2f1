"""The device side of OTA: check, download (resumable), verify through TUF, install, smoke-test, switch.

Only ``tuf`` (with ``cryptography``), the standard library and the runtime: no server code.

Layout under ``cache_dir``::

    tuf/                      trusted TUF metadata (python-tuf's ngclient keeps it)
    downloads/<sha256>.part   partial downloads, resumed with HTTP Range
    models/<model>/state.json the active and previous slots, releases that failed here (``slots``)
    models/<model>/slots/<release>/   one installed bundle (bundle.json, reference.npz, one artifact)
    outbox.jsonl              outcome reports not yet delivered (``outbox``)
    device.json               this device's token from its enrolment (mode 0600; authenticates reports)

Every request goes through one :class:`~edgekit.ota.device.fetcher.Fetcher` (``fetcher``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, UpdateError, VerificationError
from edgekit.ota import contract
from edgekit.ota.device.fetcher import Fetcher, FetchError, HttpError, UrllibFetcher, tuf_fetcher
from edgekit.ota.device.offer import Offer, UpdateResult
from edgekit.ota.device.outbox import Outbox
from edgekit.ota.device.rebuild import rebuild
from edgekit.ota.device.slots import Slots, SlotState, installed_for_another_host, runs_here, smoke
from edgekit.ota.device.telemetry import Telemetry, this_device_class

log = logging.getLogger("edgekit.ota")
Progress = Callable[[str, int, int], None]  # (file, bytes so far, total)


class Updater:
    """Keeps one device's models up to date from an edgekit OTA service.

    Args:
        server_url: The service (or any static host of its ``metadata/`` and ``targets/``).
        cache_dir: Where metadata, downloads and installed slots live.
        device_id: This device's stable id (it decides the device's rollout bucket).
        trusted_root: The TUF root the app ships with: bytes, or a path to ``root.json``.
        report: Send outcome reports to the service (kept in an outbox until delivered).
        enrolment_token: The operator's enrolment token (``edgekit ota enrolment``): the device enrols
            its id with it once and keeps the device token it gets (``device.json``, mode 0600) to
            authenticate its reports. Without either, reports wait in the outbox.
        fetcher: How to reach the service (default: :class:`~edgekit.ota.device.fetcher.UrllibFetcher` with
            ``timeout``); the TUF metadata, the files and the reports all go through it.
        telemetry_every_s: How often :meth:`send_telemetry` sends what the sessions :meth:`open` made did
            (latency histograms, errors, load time, providers; never inputs or outputs); 0 turns it off.
        device_tier: The app's own name for this device's class (``low``, ``flagship``...): the service
            compares releases per OS, CPU architecture, accelerator family and this tier.
        device_class: Replace the detected class (``os.type``, ``host.arch``, ``edgekit.accelerator``).
    """

    def __init__(self, server_url: str, cache_dir: str | os.PathLike[str], device_id: str,
                 trusted_root: bytes | str | os.PathLike[str], *, timeout: float = 30.0, report: bool = True,
                 enrolment_token: str | None = None, fetcher: Fetcher | None = None,
                 telemetry_every_s: float = 300.0, device_tier: str = "",
                 device_class: dict[str, str] | None = None) -> None:
        self.server = server_url.rstrip("/")
        self.cache = Path(cache_dir)
        self.device_id = contract.check_device_id(device_id)
        self.trusted_root = trusted_root if isinstance(trusted_root, bytes) else Path(trusted_root).read_bytes()
        self.fetcher = fetcher or UrllibFetcher(timeout)
        for folder in ("tuf", "downloads"):
            (self.cache / folder).mkdir(parents=True, exist_ok=True)
        self.slots = Slots(self.cache / "models")
        self.outbox = Outbox(self.cache, self.server, self.device_id, self.fetcher, enabled=report,
                             enrolment_token=enrolment_token)
        self._telemetry_every_s, self._tier, self._class = telemetry_every_s, device_tier, device_class
        self._telemetry: Telemetry | None = None

    # -- TUF -------------------------------------------------------------------------------------

    def _tuf(self) -> Any:
        from tuf.api import exceptions
        from tuf.ngclient import Updater as TufUpdater

        try:
            tuf = TufUpdater(str(self.cache / "tuf"), f"{self.server}/metadata/", None, f"{self.server}/targets/",
                             fetcher=tuf_fetcher(self.fetcher), bootstrap=self.trusted_root)
            tuf.refresh()
        except exceptions.DownloadError as exc:
            raise UpdateError(f"cannot reach the update server {self.server} ({exc}); the active model is unchanged") from exc
        except exceptions.RepositoryError as exc:
            raise VerificationError(f"the update server's metadata failed TUF verification: {type(exc).__name__}: {exc}; "
                                    "nothing was installed") from exc
        except (OSError, ValueError) as exc:
            raise UpdateError(f"reading update metadata failed ({exc}); the active model is unchanged") from exc
        return tuf

    def _targetinfo(self, tuf: Any, path: str) -> Any:
        from tuf.api import exceptions

        try:
            return tuf.get_targetinfo(path)
        except exceptions.DownloadError as exc:
            raise UpdateError(f"cannot reach the update server {self.server} ({exc})") from exc
        except exceptions.RepositoryError as exc:
            raise VerificationError(f"delegated metadata for {path} failed TUF verification: {type(exc).__name__}: "
                                    f"{exc}; nothing was installed") from exc

    # -- state -----------------------------------------------------------------------------------

    def state(self, model: str) -> SlotState:
        """``state.json`` of ``model``: its active and previous releases, those that failed here."""
        return self.slots.state(model)

    def active(self, model: str) -> Path | None:
        """The active slot of ``model`` (a bundle directory), or None before the first install."""
        return self.slots.active(model)

    # -- checking --------------------------------------------------------------------------------

    def check(self, model: str, channel: str) -> Offer | None:
        """The release this device should install from ``channel``, or None when it has it (or none applies).

        Raises:
            VerificationError: Metadata fails TUF, or the server offers a release older than the
                installed one without a signed rollback.
            UpdateError: The server cannot be reached.
        """
        contract.check_name(model)
        contract.check_name(channel, "channel name")
        tuf = self._tuf()
        info = self._targetinfo(tuf, contract.channel_path(model, channel))
        if info is None:
            return None
        state = contract.ChannelState.from_custom(info.custom)
        if (state.model, state.channel) != (model, channel):
            raise VerificationError(f"the signed state at {info.path} is for {state.model}/{state.channel}, "
                                    f"not {model}/{channel}")
        ref = state.release_for(self.device_id)
        if ref is None:
            return None
        local = self.state(model)
        if local.active is not None and ref.release == local.active:
            return None
        if local.channel == channel and ref.release < local.highest:
            if state.current.release < local.highest:  # the channel itself went back without a signed rollback
                raise VerificationError(f"{model}/{channel} offers release {state.current.release} as current, older "
                                        f"than release {local.highest} installed here; refused (a rollback must be "
                                        "published as a new release)")
            return None  # outside a new rollout: keep the newer release this device has
        if ref.release in local.failed:
            return None  # it failed its smoke test here once; do not loop on it
        names = state.files.get(str(ref.release))
        if not names:
            raise VerificationError(f"the signed state of {model}/{channel} lists no files for release {ref.release}")
        targets = {}
        for name in names:
            target = self._targetinfo(tuf, contract.target_path(model, channel, ref.release, name))
            if target is None:
                raise VerificationError(f"release {ref.release} of {model}/{channel} names {name}, which has no signed target")
            custom = target.custom or {}
            if (custom.get("model"), custom.get("channel"), custom.get("release")) != (model, channel, ref.release):
                raise VerificationError(f"the descriptor of {target.path} does not match its path")
            targets[name] = target
        return Offer(model, channel, ref.release, ref.version, state.rollback_of, targets,
                     state.rollout.includes(self.device_id))

    # -- downloading -----------------------------------------------------------------------------

    def _download(self, target: Any, progress: Progress | None) -> tuple[Path, int, int]:
        """The verified file of ``target`` (resuming a partial download); (path, bytes fetched, bytes resumed)."""
        from tuf.api.exceptions import LengthOrHashMismatchError

        sha = target.hashes["sha256"]
        url = f"{self.server}/{contract.target_key(target.path, sha)}"
        base = target.path.rpartition("/")[2]
        part = self.cache / "downloads" / f"{sha}.part"
        have = part.stat().st_size if part.exists() else 0
        if have > target.length:
            part.unlink()
            have = 0
        resumed, fetched = have, 0
        if have < target.length:
            try:
                with self.fetcher.get(url, offset=have) as response:
                    if response.status != 206:  # the whole file: start again
                        resumed, have = 0, 0
                    with part.open("ab" if have else "wb") as f:
                        while chunk := response.read():
                            f.write(chunk)
                            fetched += len(chunk)
                            have += len(chunk)
                            if have > target.length:
                                break
                            if progress:
                                progress(base, have, target.length)
                        f.flush()
                        os.fsync(f.fileno())
            except HttpError as exc:
                if exc.status != 416:
                    raise UpdateError(f"downloading {target.path} failed: HTTP {exc.status}; it will resume next time") from exc
            except (FetchError, OSError) as exc:
                raise UpdateError(f"downloading {target.path} was cut off ({exc}) at {have} of "
                                  f"{target.length} bytes; the next update resumes it") from exc
        have = part.stat().st_size
        if have < target.length:
            raise UpdateError(f"downloading {target.path} was cut off at {have} of {target.length} bytes; "
                              "the next update resumes it")
        with part.open("rb") as f:
            try:
                target.verify_length_and_hashes(f)
            except LengthOrHashMismatchError as exc:
                part.unlink(missing_ok=True)
                raise VerificationError(f"{target.path} does not match its signed length and sha256 ({exc}); "
                                        "discarded, nothing was installed") from exc
        return part, fetched, resumed

    # -- installing ------------------------------------------------------------------------------

    def update(self, model: str, channel: str, progress: Progress | None = None, *,
               providers: Any = "auto", target: str | None = None) -> UpdateResult:
        """Bring ``model`` up to date from ``channel``; the old slot stays active on any failure.

        ``target`` installs that target's artifact instead of the best one this host can run, also one
        it cannot run (a Core ML package fetched on Linux for an Apple device): its bytes are verified
        and the smoke test says why it was not run.

        Raises:
            VerificationError: What the server sent fails verification (nothing installed).
            UpdateError: The server cannot be reached or a download was cut off (resumes next time).
        """
        self.flush_reports()
        self._drop_installed_downloads(model)
        offer = self.check(model, channel)
        if offer is None:
            state = self.state(model)
            return UpdateResult("up_to_date", model, state.active, state.active_version, path=self.active(model))
        from edgekit.bundle import Manifest

        manifest_part, fetched, resumed = self._download(offer.targets["bundle.json"], progress)
        manifest = Manifest.from_json(manifest_part.read_text(encoding="utf-8"), where=offer.targets["bundle.json"].path)
        chosen = self._choose(manifest, offer, providers, target)
        delivered = _delivered_name(offer, chosen.file)
        wanted = ["bundle.json"] + ([manifest.reference.file] if manifest.reference else []) + [delivered]
        parts = {"bundle.json": manifest_part}
        delta_from = None
        for name in wanted[1:]:
            if name not in offer.targets:
                raise VerificationError(f"release {offer.release} has no signed target for {name}")
            rebuilt = rebuild(offer.targets, name, self.active(model), self.cache / "downloads",
                              lambda t: self._download(t, progress))
            if rebuilt is not None:
                parts[name], more, delta_from = rebuilt
                fetched += more
                continue
            parts[name], more, again = self._download(offer.targets[name], progress)
            fetched, resumed = fetched + more, resumed + again
        packed = {delivered: chosen} if delivered != chosen.file else {}
        slot = self.slots.install(model, offer.release, parts, packed)
        elsewhere = runs_here(chosen.format)
        detail = smoke(slot, chosen.target, providers) if elsewhere is None else ""
        if detail:
            state = self.state(model)
            state.failed = sorted({*state.failed, offer.release})
            self.slots.save(model, state)
            shutil.rmtree(slot, ignore_errors=True)
            self._report(offer, "failed", detail)
            return UpdateResult("failed", model, offer.release, offer.version, detail, self.active(model), fetched, resumed)
        state = self.state(model)
        if state.active is not None and state.active != offer.release:
            state.previous, state.previous_version = state.active, state.active_version
        state.channel, state.active, state.active_version = channel, offer.release, offer.version
        state.highest = max(state.highest, offer.release)
        state.installed_downloads = sorted(part.name for part in parts.values())
        self.slots.save(model, state)  # the switch: one atomic rename
        self.slots.prune(model, state)
        self._drop_installed_downloads(model)
        said = f"{chosen.target} ({chosen.format})" + (f"; verified, not runnable on this host: {elsewhere}"
                                                      if elsewhere is not None else "")
        if delta_from is not None:
            said += f"; rebuilt from release {delta_from} by a delta"
        self._report(offer, "installed", said)
        return UpdateResult("installed", model, offer.release, offer.version, said, slot, fetched, resumed, delta_from)

    def _drop_installed_downloads(self, model: str) -> None:
        """Remove the downloads the active slot was installed from (they live on in the slot)."""
        state = self.state(model)
        for name in state.installed_downloads:
            if "/" not in name and name.endswith(".part"):
                (self.cache / "downloads" / name).unlink(missing_ok=True)

    def _choose(self, manifest: Any, offer: Offer, providers: Any, target: str | None = None) -> Any:
        import dataclasses

        from edgekit.runtimes import choose

        offered = dataclasses.replace(manifest, artifacts=tuple(
            a for a in manifest.artifacts if a.file in offer.targets or contract.packed_name(a.file) in offer.targets))
        if target is not None:
            named = [a for a in offered.artifacts if a.target == target]
            if not named:
                targets = ", ".join(sorted({a.target for a in offered.artifacts})) or "none"
                raise UpdateError(f"release {offer.release} of {offer.model} offers no {target} artifact "
                                  f"(it offers: {targets})")
            return named[0]
        ranked, reason = choose(offered, providers=providers)
        if not ranked:
            raise UpdateError(f"release {offer.release} of {offer.model} has no artifact this device can run ({reason})")
        return ranked[0]

    # -- running ---------------------------------------------------------------------------------

    def open(self, model: str, **kwargs: Any) -> Any:
        """A runtime session on the active slot; if it fails to load, roll back to the previous slot.

        Raises:
            UpdateError: Nothing is installed, or neither slot loads.
        """
        from edgekit.runtimes import open as open_session

        state = self.state(model)
        if state.active is None:
            raise UpdateError(f"no release of {model} is installed here yet; run an update first")
        slot = self.slots.path(model, state.active)
        elsewhere = installed_for_another_host(slot)
        if elsewhere:  # installed with target= for another platform: not a failure of the release
            raise UpdateError(f"release {state.active} of {model} was installed for another platform: {elsewhere}")
        try:
            return self._tracked(open_session(slot, **kwargs), model, state)
        except EdgekitError as exc:
            if state.previous is None:
                raise UpdateError(f"the active release {state.active} of {model} fails to load ({exc}) and there is "
                                  "no previous release to roll back to") from exc
            bad = state.active
            log.warning("release %s of %s fails to load (%s); rolling back to release %s", bad, model, exc, state.previous)
            state.failed = sorted({*state.failed, bad})
            state.active, state.active_version = state.previous, state.previous_version
            state.previous = state.previous_version = None
            self.slots.save(model, state)
            if state.channel:
                self.outbox.queue({"model": model, "channel": state.channel, "release": bad, "outcome": "rolled_back",
                                   "detail": f"failed to load: {exc}"[:500]})
                self.flush_reports()
            return self._tracked(open_session(self.slots.path(model, state.active), **kwargs), model, state)

    def _tracked(self, session: Any, model: str, state: SlotState) -> Any:
        if self._telemetry_every_s and self.outbox.enabled and state.channel and state.active:
            if self._telemetry is None:
                resource = {**this_device_class(self._tier), **(self._class or {})}
                self._telemetry = Telemetry(self.device_id, resource, every_s=self._telemetry_every_s)
            self._telemetry.track(session, model, state.channel, state.active)
        return session

    def send_telemetry(self, *, force: bool = False) -> int:
        """Queue what the sessions :meth:`open` made did since the last batch (when ``telemetry_every_s``
        has passed, or ``force``) and send the outbox. How many reports and batches were sent."""
        t = self._telemetry
        if t is None or not (force or t.due()):
            return 0
        batch = t.batch()
        if batch is not None:
            self.outbox.queue_telemetry(batch)
        return self.outbox.flush()

    # -- reports ---------------------------------------------------------------------------------

    def _report(self, offer: Offer, outcome: str, detail: str) -> None:
        self.outbox.queue({"model": offer.model, "channel": offer.channel, "release": offer.release,
                           "outcome": outcome, "detail": detail[:500]})
        self.flush_reports()

    def flush_reports(self) -> int:
        """Send queued outcome reports with this device's token; those the server cannot take now stay
        queued (at most ``Outbox.MAX``, oldest dropped first). How many were sent."""
        return self.outbox.flush()


def _delivered_name(offer: Offer, file: str) -> str:
    """The target a manifest's artifact file arrives as: itself, or its tar for a directory (.mlpackage)."""
    packed = contract.packed_name(file)
    return packed if file not in offer.targets and packed in offer.targets else file
