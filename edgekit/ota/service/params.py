"""The path parameters every route of ``edgekit serve`` shares (imported with FastAPI, inside
``create_app``)."""

from typing import Annotated

from fastapi import Path

from edgekit.ota.contract import NAME_SCHEMA

ModelName = Annotated[str, Path(pattern=NAME_SCHEMA, max_length=64, description="a-z 0-9 . _ -")]
ChannelName = Annotated[str, Path(pattern=NAME_SCHEMA, max_length=64, description="a-z 0-9 . _ -")]
