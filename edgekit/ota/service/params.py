"""What the routes of ``edgekit serve`` share: the path parameters and the OpenAPI entries of their
answers (imported with FastAPI, inside ``create_app``)."""

from typing import Annotated, Any

from fastapi import Path

from edgekit.ota.contract import NAME_SCHEMA

ModelName = Annotated[str, Path(pattern=NAME_SCHEMA, max_length=64, description="a-z 0-9 . _ -")]
ChannelName = Annotated[str, Path(pattern=NAME_SCHEMA, max_length=64, description="a-z 0-9 . _ -")]

ERRORS = {400: "the body is not valid JSON", 401: "no token, or an unknown one",
          403: "the token lacks the scope, or names another device",
          404: "no such model, channel, release or file", 408: "the upload came too slowly",
          409: "in conflict with the current state",
          413: "the upload is over a limit", 422: "the request does not match the API", 429: "too many requests"}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route gives (each an {"error": message} object)."""
    schema = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    return {code: {"description": ERRORS[code], "content": {"application/json": {"schema": schema}}} for code in codes}


def file_responses() -> dict[int | str, dict[str, Any]]:
    """The answers of the static device paths."""
    return {200: {"description": "the file", "content": {"application/json": {}, "application/octet-stream": {}}},
            206: {"description": "the requested byte range"}, 304: {"description": "unchanged (If-None-Match)"},
            416: {"description": "the range is outside the file"}, **responses(404)}
