"""The HTTP API: JSON over the hub's listener, described by /openapi.json.

Reads come from the same status snapshot as `carom status --json` and
/metrics. Every action and `explain` is a control-socket command: the request
is built as the CLI would send it, checked by `control.parse_request` against
the same COMMANDS table, and answered by the daemon's one `handle()`, so the
CLI and the API cannot drift apart. A command the daemon does not have yet is
answered 501. Actions need `Authorization: Bearer <token>` (api.token_file)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from typing import Any, Protocol

from carom.config.ops import read_token
from carom.config.schema import Config
from carom.daemon import control
from carom.ops import http
from carom.ops.openapi import document


class _Daemon(Protocol):
    config: Config | None

    async def handle(self, req: dict[str, Any]) -> dict[str, Any] | bytes | control.Stream: ...


class Source(Protocol):
    """What the API reads from (the hub): the daemon and the shared snapshot."""

    @property
    def daemon(self) -> _Daemon: ...

    async def snapshot(self) -> dict[str, Any]: ...


_REAL_ACTION = re.compile(r"^/v1/reals/(?P<address>[^/]+)/(?P<action>drain|undrain|weight)$")
_SERVICE = re.compile(r"^/v1/services/(?P<name>[^/]+)$")


def reals_of(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Each real address once, with its traffic and its state in every service."""
    out: dict[str, dict[str, Any]] = {}
    for svc in status["services"]:
        for r in svc["reals"]:
            entry = out.setdefault(
                r["address"],
                {
                    "address": r["address"],
                    "real_id": r["real_id"],
                    "mac": r["mac"],
                    "packets": r["packets"],
                    "bytes": r["bytes"],
                    "services": [],
                },
            )
            entry["services"].append(
                {
                    "service": svc["name"],
                    "weight": r["weight"],
                    "state": r["state"],
                    "detail": r["detail"],
                }
            )
    for d in status.get("draining", []):
        out.setdefault(
            d["address"],
            {
                "address": d["address"],
                "real_id": d["real_id"],
                "packets": d["packets"],
                "draining": True,
                "services": [],
            },
        )
    return list(out.values())


class Api:
    def __init__(self, ops: Source) -> None:
        self.ops = ops

    async def handle(self, req: http.Request) -> http.Response:
        path = req.path.rstrip("/") or "/"
        if path == "/openapi.json":
            return http.json_response(200, document())
        if req.method == "GET":
            return await self._read(path, req)
        if req.method in ("POST", "PUT"):
            return await self._action(path, req)
        return http.error(405, f"{req.method} is not supported; see /openapi.json")

    # --- reads --------------------------------------------------------------------------
    async def _read(self, path: str, req: http.Request) -> http.Response:
        if path == "/v1/explain":
            args: dict[str, Any] = {
                "client": req.query.get("client"),
                "service": req.query.get("service"),
            }
            if "syn" in req.query:
                args["syn"] = req.query["syn"].lower() in ("1", "true", "yes")
            return await self.command("explain", {k: v for k, v in args.items() if v is not None})
        if path not in ("/v1/status", "/v1/services", "/v1/reals", "/v1/counters", "/") and not (
            _SERVICE.match(path)
        ):
            return http.error(404, f"no such path {path}; see /openapi.json")
        st = await self.ops.snapshot()
        if path in ("/", "/v1/status"):
            return http.json_response(200, {"ok": True, "status": st})
        if path == "/v1/services":
            return http.json_response(200, {"ok": True, "services": st["services"]})
        if path == "/v1/reals":
            return http.json_response(200, {"ok": True, "reals": reals_of(st)})
        if path == "/v1/counters":
            return http.json_response(200, {"ok": True, "counters": st["counters"]})
        m = _SERVICE.match(path)
        assert m is not None
        for svc in st["services"]:
            if svc["name"] == m["name"]:
                return http.json_response(200, {"ok": True, "service": svc})
        names = ", ".join(s["name"] for s in st["services"])
        return http.error(404, f"no service {m['name']!r}; the services are: {names}")

    # --- actions ------------------------------------------------------------------------
    def _authorized(self, req: http.Request) -> http.Response | None:
        """None when the bearer token matches; else the response that refuses."""
        cfg = self.ops.daemon.config
        token_file = cfg.api.token_file if cfg is not None and cfg.api is not None else None
        if token_file is None:
            return http.error(
                403, "actions are disabled: set api.token_file in the config and reload"
            )
        try:
            token = read_token(token_file)
        except ValueError as exc:
            return http.error(403, f"actions are disabled: {exc}")
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return http.Response(
                401,
                b'{"ok": false, "error": "send Authorization: Bearer <the token in '
                b'api.token_file>"}\n',
                headers={"WWW-Authenticate": 'Bearer realm="carom"'},
            )
        return None

    async def _action(self, path: str, req: http.Request) -> http.Response:
        if path != "/v1/reload" and not _REAL_ACTION.match(path):
            return http.error(404, f"no such action {path}; see /openapi.json")
        refused = self._authorized(req)
        if refused is not None:
            return refused
        try:
            body = json.loads(req.body) if req.body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return http.error(400, f"the body is not JSON ({exc})")
        if not isinstance(body, dict):
            return http.error(400, "the body must be a JSON object")
        if path == "/v1/reload":
            return await self.command("reload", body)
        m = _REAL_ACTION.match(path)
        assert m is not None
        try:
            address = str(ipaddress.ip_address(m["address"]))
        except ValueError:
            return http.error(400, f"{m['address']!r} is not an IP address")
        return await self.command(f"real-{m['action']}", {**body, "address": address})

    async def command(self, name: str, args: dict[str, Any]) -> http.Response:
        """One control command, exactly as the control socket would take it."""
        if name not in control.COMMANDS:
            return http.error(
                501,
                f"this daemon has no {name!r} command yet; the commands are: "
                f"{', '.join(control.COMMANDS)}",
            )
        line = json.dumps({**args, "command": name}).encode() + b"\n"
        try:
            request = control.parse_request(line)
            reply = await self.ops.daemon.handle(request)
        except control.RequestError as exc:
            return http.error(400, str(exc))
        except ValueError as exc:  # a well-formed request with a bad value
            return http.error(400, " ".join(str(exc).split()))
        if isinstance(reply, control.Stream):  # only the control socket streams
            reply.close()
            return http.error(501, f"{name!r} streams: use `carom {name}`")
        if isinstance(reply, bytes):
            return http.Response(200 if b'"ok": true' in reply[:20] else 409, reply + b"\n")
        return http.json_response(200 if reply.get("ok") else 409, reply)
