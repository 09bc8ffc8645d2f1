"""Files in any S3-compatible object store (``boto3``), shared by several service replicas.

Keys are the same as ``FileStorage``'s, under an optional prefix. Objects are written whole (a
reader sees the old object or the new one), and ``Range`` reads go to the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edgekit.errors import MissingDependencyError, UserError
from edgekit.ota.service.storage import Stat, check_key


class S3Storage:
    """A bucket (created if missing). Credentials come from the usual AWS environment variables."""

    def __init__(self, bucket: str, *, endpoint: str | None = None, region: str = "us-east-1", prefix: str = "",
                 access_key: str | None = None, secret_key: str | None = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise MissingDependencyError("S3 storage needs boto3: pip install 'edgekit[ota-s3]'", extra="ota-s3",
                                         package="boto3") from exc
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}, signature_version="s3v4"))
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=bucket)
            except self._errors as exc:
                raise UserError(f"cannot create or reach the S3 bucket {bucket!r} at {endpoint or 'AWS'} ({exc})") from exc
        except BotoCoreError as exc:
            raise UserError(f"cannot reach the S3 store at {endpoint or 'AWS'} ({exc}); check --storage") from exc

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        """``s3://BUCKET[/PREFIX]?endpoint=http://host:port&region=us-east-1``."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(parts.netloc, endpoint=query.get("endpoint"), region=query.get("region", "us-east-1"),
                   prefix=parts.path)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def get(self, key: str) -> bytes:
        try:
            body: Any = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return bytes(body.read())
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def stat(self, key: str) -> Stat | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        etag = str(head["ETag"])
        return Stat(int(head["ContentLength"]), etag if etag.startswith('"') else f'"{etag}"')

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        body: Any = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end}")["Body"]
        try:
            yield from body.iter_chunks(1 << 20)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
