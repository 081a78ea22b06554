"""The OpenAPI 3.1 document of the HTTP API (served at /openapi.json). Written
by hand from the routes in api.py, short enough to read next to them."""

from __future__ import annotations

from typing import Any

from carom import __version__

_OK = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
_ERROR = {
    "description": "refused; `error` says why",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"ok": {"const": False}, "error": {"type": "string"}},
            }
        }
    },
}


def _json(description: str, **props: Any) -> dict[str, Any]:
    schema = {**_OK, "properties": {**_OK["properties"], **props}}  # type: ignore[dict-item]
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _read(summary: str, **props: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": _json(summary, **props)}}}


def _action(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            "200": _json("done; the daemon's reply"),
            "400": _ERROR,
            "401": _ERROR,
            "403": _ERROR,
            "409": _ERROR,
            "501": _ERROR,
        },
    }
    if body is not None:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object", **body}}},
        }
    return {"post": op}


_ADDRESS = {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}}
_OPTIONAL_SERVICE = {
    "properties": {"service": {"type": "string", "description": "only in this service"}}
}


def document() -> dict[str, Any]:
    obj = {"type": "object"}
    paths: dict[str, Any] = {
        "/v1/status": _read("Everything `carom status --json` shows", status=obj),
        "/v1/services": _read("Services with their reals and traffic", services={"type": "array"}),
        "/v1/services/{name}": _read("One service", service=obj),
        "/v1/reals": _read(
            "Each real once: traffic, and state and weight per service", reals={"type": "array"}
        ),
        "/v1/counters": _read("Data-plane counters by name (docs/datapath.md)", counters=obj),
        "/v1/explain": {
            "get": {
                "summary": "Which real a flow goes to, and why (as `carom explain`)",
                "parameters": [
                    {
                        "name": "client",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "198.51.100.10:40000",
                    },
                    {
                        "name": "service",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "192.0.2.100:80/tcp",
                    },
                    {"name": "syn", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _json("the decision", explain=obj, text={"type": "string"}),
                    "400": _ERROR,
                },
            }
        },
        "/v1/reload": _action("Re-read the config file and apply the difference (`carom reload`)"),
        "/v1/reals/{address}/drain": _action(
            "No new flows to this real; established ones go on", _OPTIONAL_SERVICE
        ),
        "/v1/reals/{address}/undrain": _action("Undo a drain", _OPTIONAL_SERVICE),
        "/v1/reals/{address}/weight": _action(
            "Set the real's weight at runtime",
            {
                "required": ["weight"],
                "properties": {
                    "weight": {"type": "integer", "minimum": 0, "maximum": 65535},
                    **_OPTIONAL_SERVICE["properties"],
                },
            },
        ),
    }
    for p in (
        "/v1/reals/{address}/drain",
        "/v1/reals/{address}/undrain",
        "/v1/reals/{address}/weight",
    ):
        paths[p]["post"]["parameters"] = [_ADDRESS]
    paths["/v1/services/{name}"]["get"]["parameters"] = [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "carom",
            "version": __version__,
            "description": "carom's HTTP API: reads need no token, actions need "
            "`Authorization: Bearer <token>` (api.token_file).",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
