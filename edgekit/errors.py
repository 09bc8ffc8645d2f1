"""The one exception hierarchy of edgekit.

Every error edgekit raises on purpose derives from :class:`EdgekitError`. Errors the user can fix
derive from :class:`UserError`; the CLI maps those to exit code 2 and prints only the message.
Anything else is a bug in edgekit and maps to exit code 1.

::

    EdgekitError
    ├── UserError                      the user can fix it (exit code 2)
    │   ├── InvalidModelError          missing, unreadable or malformed model file
    │   ├── UnsupportedModelError      a model edgekit cannot take (kind, op, layout)
    │   ├── MissingDependencyError     an optional extra is not installed (also ImportError)
    │   ├── UnknownTargetError         a target id edgekit does not know
    │   ├── NoRouteError               no chain of passes reaches the target
    │   ├── CalibrationError           the calibration file does not fit the model
    │   ├── ParityError                an artifact's outputs drift beyond the target's tolerance
    │   ├── BundleError                a bundle is missing, malformed or not valid against the schema
    │   │   └── IntegrityError         an artifact's size or sha256 does not match the manifest
    │   ├── OutputExistsError          the output directory exists and overwriting was not asked
    │   ├── ConversionError            a converter library failed on this model (names pass and cause)
    │   │   └── WrongGraphError        a route's float32 program does not match the source
    │   ├── PartialConversionError     some targets failed; the bundle holds the others
    │   ├── ProviderError              no allowed execution provider could load or run the artifact
    │   ├── InvalidInputError          feeds do not match the model's inputs
    │   ├── InvalidNameError           a model, channel, device or file name breaks the naming rule
    │   ├── NotFoundError              no such stored object (a key that cannot exist, or does not)
    │   ├── TelemetryError             a device's telemetry batch is malformed or over a limit
    │   └── OtaRequestError            the OTA service refused a request (token, scope, state)
    │       └── AuthError              no API token, an unknown one, or one without the scope
    ├── NotVerifiableError             no checker on this host can run the artifact (kept, unverified)
    ├── InferenceError                 the runtime failed on valid inputs (out of memory, a kernel)
    ├── UpdateError                    a device could not update (network, server) (exit code 1)
    │   └── VerificationError          what the server sent fails TUF verification: tampered, replayed,
    │                                  expired, a release older than the installed one (refused)
    └── InternalError                  a bug in edgekit (exit code 1)
"""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to a mistyped ``word``, else an empty string."""
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class EdgekitError(Exception):
    """Root of every error edgekit raises on purpose."""

    exit_code = 1


class UserError(EdgekitError):
    """A problem the user can fix: bad input, missing extra, bad flags."""

    exit_code = 2


class InvalidModelError(UserError):
    """The model file is missing, unreadable or malformed."""


class UnsupportedModelError(UserError):
    """The model is valid but edgekit cannot take it (model kind, operator, layout)."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, message: str, *, extra: str | None = None, package: str | None = None):
        super().__init__(message)
        self.extra = extra
        self.package = package


class UnknownTargetError(UserError):
    """A target id that edgekit does not know."""


class NoRouteError(UserError):
    """No chain of passes reaches the requested target from the source model."""


class CalibrationError(UserError):
    """The calibration file does not fit the model (missing input, wrong shape or dtype)."""


class ParityError(UserError):
    """A converted artifact's outputs differ from the source model's beyond the tolerance."""


class BundleError(UserError):
    """A bundle directory or its ``bundle.json`` is missing, malformed or invalid."""


class IntegrityError(BundleError):
    """An artifact's size or sha256 differs from what the manifest records."""


class OutputExistsError(UserError):
    """The output path already exists and the caller did not ask to overwrite it."""


class ConversionError(UserError):
    """A converter library failed on this model; the message names the pass and the cause."""


class WrongGraphError(ConversionError):
    """A route's float32 program does not match the source: no precision choice on it can pass, so the next
    route is tried (the message gives the error measured)."""


class PartialConversionError(UserError):
    """Some targets failed: the bundle holds the others and records the failures.

    ``result`` is the :class:`~edgekit.converters.pipeline.ConversionResult` that was written.
    """

    def __init__(self, message: str, result: object):
        super().__init__(message)
        self.result = result


class ProviderError(UserError):
    """No execution provider the caller allowed could load or run the artifact (or the strict policy
    refused a fallback); the message lists every provider tried and why it was passed over."""


class NotVerifiableError(EdgekitError):
    """No checker on this host can run the artifact (an op the reference interpreter lacks, Flex ops):
    it is kept, marked ``unverified`` with this message, instead of being validated."""


class InferenceError(EdgekitError):
    """The runtime failed while running a loaded model on valid inputs (out of memory, a kernel error)."""


class InvalidInputError(UserError):
    """Feeds given to a session do not match the model's inputs (name, rank, fixed size or dtype)."""


class InvalidNameError(UserError):
    """A model, channel, device id or bundle file name breaks edgekit's naming rule (no paths, no tricks)."""


class NotFoundError(UserError):
    """No such stored object: a storage key that cannot exist (a traversal, an absolute path) or does not."""


class TelemetryError(UserError):
    """A device's telemetry batch is malformed, over a limit, or not plausible for its device."""


class OtaRequestError(UserError):
    """The OTA service refused a request the caller can correct; ``status`` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class AuthError(OtaRequestError):
    """A publishing or rollout request without a token, with an unknown one, or one lacking the scope."""

    status = 401


class UpdateError(EdgekitError):
    """A device could not complete an update (server unreachable, download failed): its active model
    is untouched and the update can be tried again."""


class VerificationError(UpdateError):
    """What the server sent fails verification (TUF signatures, versions, expiry, length or hashes,
    or a release older than the installed one without a signed rollback): it is refused, not installed."""


class InternalError(EdgekitError):
    """A bug in edgekit: please report it with the message and the command that caused it."""


__all__ = [
    "AuthError",
    "BundleError",
    "CalibrationError",
    "ConversionError",
    "EdgekitError",
    "InferenceError",
    "IntegrityError",
    "InternalError",
    "InvalidInputError",
    "InvalidModelError",
    "InvalidNameError",
    "MissingDependencyError",
    "NoRouteError",
    "NotFoundError",
    "NotVerifiableError",
    "OtaRequestError",
    "OutputExistsError",
    "ParityError",
    "PartialConversionError",
    "ProviderError",
    "TelemetryError",
    "UnknownTargetError",
    "UnsupportedModelError",
    "UpdateError",
    "UserError",
    "VerificationError",
    "WrongGraphError",
    "did_you_mean",
]
