"""The OpenAPI document of the dashboard's JSON (``GET /openapi.json``).

The schemas come from the pydantic models the endpoints answer with, so the document
cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from .._version import __version__
from ..sync._task import TaskRun
from ._state import DashboardState

__all__ = ["dashboard_openapi"]


class ActionAnswer(BaseModel):
    """The answer to a button."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    message: str


class JobHistory(BaseModel):
    """A job's runs, newest first."""

    model_config = ConfigDict(frozen=True)

    job: str
    runs: list[TaskRun]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(name)}},
    }


_TOKEN = [
    {
        "name": "token",
        "in": "query",
        "required": False,
        "description": "The access token from the URL the dashboard printed (or the "
        "X-Dashboard-Token header).",
        "schema": {"type": "string"},
    }
]


def dashboard_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the dashboard's JSON endpoints."""
    _, schemas = models_json_schema(
        [(m, "serialization") for m in (DashboardState, ActionAnswer, JobHistory)],
        ref_template="#/components/schemas/{model}",
    )
    forbidden = {"description": "No or a wrong access token."}
    paths: dict[str, Any] = {
        "/api/state": {
            "get": {
                "summary": "Everything the page shows",
                "parameters": _TOKEN,
                "responses": {"200": _json("DashboardState", "The state."), "403": forbidden},
            }
        },
        "/api/events": {
            "get": {
                "summary": "Live state: server-sent events",
                "description": "`event: state` with a DashboardState (JSON) on connect and "
                "each time it changes; `: keep-alive` comments while nothing does.",
                "parameters": _TOKEN,
                "responses": {
                    "200": {
                        "description": "An event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "403": forbidden,
                },
            }
        },
        "/api/jobs/{job}/history": {
            "get": {
                "summary": "A job's runs",
                "parameters": [
                    *_TOKEN,
                    {"name": "job", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {"200": _json("JobHistory", "The runs."), "403": forbidden},
            }
        },
        "/api/{target}/{key}/{verb}": {
            "post": {
                "summary": "A button: retry or discard a dead op or a quarantined change; "
                "enable, disable or run a job",
                "parameters": [
                    *_TOKEN,
                    {
                        "name": "target",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["dead", "quarantine", "jobs"]},
                    },
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "verb",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["retry", "discard", "enable", "disable", "run"]},
                    },
                ],
                "responses": {
                    "200": _json("ActionAnswer", "Done."),
                    "400": _json("ActionAnswer", "Not done, and why."),
                    "403": forbidden,
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "nexus-store dashboard", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas["$defs"]},
    }
