"""The sync server's OpenAPI description, made from the wire models (``/openapi.json``).

Every body the server reads or writes is a pydantic model of :mod:`nexus_store._http_api`
or the remote seam, so the schema is generated from them and cannot drift from what the
endpoints do.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from .._blob_api import BATCH_TYPE, BLOBS_PATH, MANIFEST_LENGTH, MAX_BATCH_BLOBS
from .._http_api import (
    EVENTS_PATH,
    HEALTH_PATH,
    JSON,
    MSGPACK,
    OPENAPI_PATH,
    PULL_PATH,
    PUSH_PATH,
    ErrorBody,
    HeadEvent,
    Health,
    PushRequest,
)
from .._remote import Changes, PushResult
from .._version import __version__

__all__ = ["openapi_schema"]


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API, built from the pydantic models' schemas."""
    _, top = models_json_schema(
        [
            (PushRequest, "validation"),
            (PushResult, "serialization"),
            (Changes, "serialization"),
            (ErrorBody, "serialization"),
            (Health, "serialization"),
            (HeadEvent, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas = top.get("$defs", {})

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def body(name: str) -> dict[str, Any]:
        return {MSGPACK: {"schema": ref(name)}, JSON: {"schema": ref(name)}}

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {JSON: {"schema": ref("ErrorBody")}}}

    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}
    common = {
        "401": error("Missing, unknown or expired bearer token."),
        "429": {**error("The tenant's rate limit was reached."), "headers": retry_after},
        "503": {**error("Storage unavailable; retry later."), "headers": retry_after},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nexus-store sync server",
            "version": __version__,
            "description": (
                "Push batches of ops, pull changes after a cursor, listen for news. Every "
                "answer carries the server's clock (Nexus-Clock, ms since the epoch) and its "
                "bound on clock offsets (Nexus-Clock-Bound, ms): ops stamped further ahead "
                "are applied with the server's time."
            ),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            PUSH_PATH: {
                "post": {
                    "operationId": "push",
                    "summary": "Apply a batch of ops (idempotent by op_id).",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
                    ],
                    "requestBody": {"required": True, "content": body("PushRequest")},
                    "responses": {
                        "200": {
                            "description": "One result per op, in order.",
                            "content": body("PushResult"),
                        },
                        "400": error("Not a valid batch."),
                        "413": error("Body or batch too large."),
                        "415": error("Neither msgpack nor JSON."),
                        **common,
                    },
                }
            },
            PULL_PATH: {
                "get": {
                    "operationId": "pull",
                    "summary": "Changes after a cursor, in sequence order.",
                    "parameters": [
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                        {
                            "name": "collections",
                            "in": "query",
                            "schema": {"type": "array", "items": {"type": "string"}},
                            "style": "form",
                            "explode": True,
                        },
                    ],
                    "responses": {
                        "200": {"description": "A page of changes.", "content": body("Changes")},
                        "400": error("Bad parameters."),
                        **common,
                    },
                }
            },
            EVENTS_PATH: {
                "get": {
                    "operationId": "events",
                    "summary": "Server-sent events: the tenant's head, each time it grows.",
                    "responses": {
                        "200": {
                            "description": "event: head, data: HeadEvent (JSON).",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **common,
                    },
                }
            },
            HEALTH_PATH: {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "summary": "Liveness, version and limits.",
                    "responses": {
                        "200": {"description": "Up.", "content": {JSON: {"schema": ref("Health")}}}
                    },
                }
            },
            BLOBS_PATH: _blob_batch(error, common),
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "summary": "This description.",
                    "responses": {"200": {"description": "OpenAPI 3.1 document."}},
                }
            },
        },
    }


def _blob_batch(error: Any, common: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/blobs``: many small blobs in one request (servers that store files)."""
    answer = {
        "type": "object",
        "required": ["blobs"],
        "properties": {
            "blobs": {
                "type": "array",
                "description": "One answer per blob, in the manifest's order.",
                "items": {
                    "type": "object",
                    "required": ["sha256", "status"],
                    "properties": {
                        "sha256": {"type": "string"},
                        "status": {
                            "type": "integer",
                            "description": "201 stored, 200 already there, else the refusal "
                            "of this blob alone (400 bad_hash, 413 blob_too_large or "
                            "quota_exceeded, 460 blob_hash_mismatch).",
                        },
                        "error": {"type": ["string", "null"]},
                        "detail": {"type": ["string", "null"]},
                    },
                },
            }
        },
    }
    return {
        "post": {
            "operationId": "putBlobs",
            "summary": "Store many small blobs at once, each verified by its SHA-256.",
            "description": (
                "The body is a manifest (a JSON list of {sha256, size}, at most "
                f"{MAX_BATCH_BLOBS} entries; its byte length in {MANIFEST_LENGTH}) followed "
                "by each blob's bytes back to back. Each blob is stored whole and durably, "
                "or not at all. The largest body is the OPTIONS /v1/files answer's "
                "Nexus-Max-Batch header. Only on servers that store files."
            ),
            "parameters": [
                {
                    "name": MANIFEST_LENGTH,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {BATCH_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": {
                "200": {
                    "description": "Each blob's answer.",
                    "content": {"application/json": {"schema": answer}},
                },
                "400": error("The body cannot be read as a batch; nothing was stored."),
                "411": error("No Content-Length."),
                "413": error("The body is over the batch limit (answered before it is read)."),
                "415": error("Another content type."),
                **common,
            },
        }
    }
