"""optuna-dashboard on the same storage (and the trial artifacts), behind :class:`DashboardGuard`.

optuna-dashboard's HTTP API has no authentication, so the guard decides what a request may do:

* **Host**: every request must carry ``Host: 127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT`` or the bound
  ``--host`` address with the port (the bare name on port 80); anything else is 403 (DNS rebinding).
* **Reads** (GET, HEAD, OPTIONS) pass.
* **Writes** without ``allow_writes`` are 403, except the ones the review features need:

  - ``PUT /api/studies/<study_id>/note``: save a study note;
  - ``PUT /api/studies/<study_id>/<trial_id>/note``: save a trial note;
  - ``POST /api/trials/<trial_id>/user-attrs``: submit the review form (:mod:`skipsearch.export.review`), which sets
    only ``verdict`` and ``verdict_comment``; any other attribute (a trial's schedule, a review trial's link to the
    trial it reviews) is refused.

  Not among them: ``POST /api/trials/<trial_id>/tell`` (objective form widgets, "mark Complete/Fail"), which
  finishes a trial a worker may be running, and the preferential-study feedback routes; skipsearch uses neither.
* **Origin**: a write whose ``Origin`` header is present must be ``http://`` + the Host (cross-site forms, CSRF).
* With ``allow_writes`` every other write passes, except deleting or renaming (optuna-dashboard's rename deletes the
  old study) a study that a row of the best table names: 409, so ``best`` never points at a missing study.

Routes are matched with the dashboard's own bottle router, after the same path decoding and trailing-slash stripping
the dashboard applies, so what the guard checks is what the dashboard would run.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from skipsearch.errors import SkipsearchError, UsageError
from skipsearch.export.review import COMMENT_KEY, VERDICT_KEY
from skipsearch.settings import Settings
from skipsearch.store.studies import artifact_dir, optuna_storage

__all__ = ["DashboardGuard", "make_server", "serve"]

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_REVIEW_WRITES = frozenset({
    ("PUT", "/api/studies/<study_id:int>/note"),
    ("PUT", "/api/studies/<study_id:int>/<trial_id:int>/note"),
    ("POST", "/api/trials/<trial_id:int>/user-attrs"),
})
_USER_ATTRS = ("POST", "/api/trials/<trial_id:int>/user-attrs")
_LOSES_STUDY = frozenset({("DELETE", "/api/studies/<study_id:int>"), ("POST", "/api/studies/<study_id:int>/rename")})
_VERDICT_KEYS = frozenset({VERDICT_KEY, COMMENT_KEY})
_RESTART = "restart with 'skipsearch dashboard --allow-writes' to allow it"

StartResponse = Callable[..., Any]


class DashboardGuard:
    """WSGI middleware around optuna-dashboard's bottle app; the module docstring lists what it lets through."""

    def __init__(self, app: Any, *, host: str, port: int, storage: Any, storage_url: str,
                 allow_writes: bool = False, lock_timeout: float | None = None) -> None:
        self.app, self.storage, self.storage_url, self.allow_writes = app, storage, storage_url, allow_writes
        self.lock_timeout = lock_timeout  # the server's settings.lock_timeout, for the best table
        self.set_address(host, port)

    def set_address(self, host: str, port: int) -> None:
        """The bound address (call again once a port 0 bind has its real port)."""
        names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
        self.hosts = {f"{name}:{port}".lower() for name in names}
        if port == 80:  # browsers leave the default port out of Host
            self.hosts |= {name.lower() for name in names}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # optuna-dashboard reads request.headers["Accept-Encoding"] (static files, favicon): a client that sends
        # none (curl, scripts) would get a 500 and a traceback in the log. No header means identity (RFC 9110).
        environ.setdefault("HTTP_ACCEPT_ENCODING", "identity")
        host = environ.get("HTTP_HOST", "").strip().lower()
        if host not in self.hosts:
            shown = repr(host) if host else "(none)"
            return _refuse(start_response, "403 Forbidden", f"refused: Host {shown} is not this dashboard's address; "
                           f"open it as http://{sorted(self.hosts)[0]}/")
        method = environ.get("REQUEST_METHOD", "").upper()  # bottle matches methods case-insensitively
        if method in _READS:
            return self.app(environ, start_response)
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and origin.strip().lower() != f"http://{host}":
            return _refuse(start_response, "403 Forbidden", f"refused: a write from Origin {origin!r} (another "
                           f"site); send it from the dashboard page at http://{host}/")
        rule = self._rule(environ, method)
        if not self.allow_writes:
            if rule is None or rule[:2] not in _REVIEW_WRITES:
                return _refuse(start_response, "403 Forbidden", f"refused: {method} {environ.get('PATH_INFO', '')} "
                               f"changes the study database and this dashboard is read-only except notes and "
                               f"review forms; {_RESTART}")
            if rule[:2] == _USER_ATTRS:
                refusal = _check_user_attrs(environ)
                if refusal:
                    return _refuse(start_response, *refusal)
        elif rule is not None and rule[:2] in _LOSES_STUDY:
            try:
                conflict = self._best_conflict(int(rule[2]))
            except SkipsearchError as exc:  # fail closed: an unchecked delete could strand a best row
                conflict = f"refused: cannot check the best table ({exc}); retry once the database answers"
            if conflict:
                return _refuse(start_response, "409 Conflict", conflict)
        return self.app(environ, start_response)

    def _rule(self, environ: dict[str, Any], method: str) -> tuple[str, str, Any] | None:
        """(method, route rule, first URL argument) the dashboard would dispatch to, or None (404/405)."""
        try:  # same decoding as bottle and the dashboard's trailing-slash hook
            path = environ.get("PATH_INFO", "").encode("latin1").decode("utf8", "ignore").rstrip("/")
        except UnicodeEncodeError:
            return None
        import bottle
        try:
            route, args = self.app.match({"REQUEST_METHOD": method, "PATH_INFO": path})
        except bottle.HTTPError:  # no such route (404/405)
            return None
        return route.method.upper(), route.rule, next(iter(args.values()), None)

    def _best_conflict(self, study_id: int) -> str | None:
        """Why the study must stay (a best row names it), or None."""
        from skipsearch.store import BestStore
        try:
            name = self.storage.get_study_name_from_id(study_id)
        except KeyError:
            return None  # the dashboard answers 404
        with BestStore(self.storage_url, lock_timeout=self.lock_timeout) as store:
            rows = [row for row in store.best() if row.study_name == name]
        if not rows:
            return None
        held = "; ".join(f"model {r.model_name}, sampler {r.sampler}, NFE {r.nfe}" for r in rows)
        return (f"refused: study {name!r} (id {study_id}) holds the best schedule in the best table ({held}); "
                f"keep the study so the best row keeps its source")


def _check_user_attrs(environ: dict[str, Any]) -> tuple[str, str] | None:
    """Read the body (and put it back) and refuse any attribute but the verdict form's; (status, message) or None."""
    import bottle
    if environ.get("HTTP_TRANSFER_ENCODING"):  # bottle would read a chunked body this check cannot see
        return "411 Length Required", "refused: send the user attributes with a Content-Length, not chunked"
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return "400 Bad Request", "refused: Content-Length is not a number"
    if length > bottle.BaseRequest.MEMFILE_MAX:
        return "413 Request Entity Too Large", f"refused: user attributes over {bottle.BaseRequest.MEMFILE_MAX} bytes"
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
    if environ.get("CONTENT_TYPE", "").lower().split(";")[0].strip() not in ("application/json",
                                                                            "application/json-rpc"):
        return "415 Unsupported Media Type", "refused: send the user attributes as application/json"
    try:  # as bottle parses it: UTF-8, then JSON
        doc = json.loads(body.decode("utf8"))
    except ValueError:
        return "400 Bad Request", "refused: the body is not UTF-8 JSON"
    attrs = doc.get("user_attrs", {}) if isinstance(doc, dict) else None
    if not isinstance(attrs, dict):
        return "400 Bad Request", "refused: 'user_attrs' must be a JSON object"
    others = sorted(str(k) for k in attrs if str(k) not in _VERDICT_KEYS)
    if others:
        return "403 Forbidden", (f"refused: trial user attribute(s) {', '.join(map(repr, others))}: the review form "
                                 f"sets only {' and '.join(sorted(_VERDICT_KEYS))} ({_RESTART})")
    return None


def _refuse(start_response: StartResponse, status: str, message: str) -> list[bytes]:
    body = (message + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the dashboard polls every few seconds; one line per request would bury the banner


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser holding a connection must not keep Ctrl-C from exiting


class _Server6(_Server):
    address_family = socket.AF_INET6


def check_address(host: str, port: int, *, public: bool = False) -> str | None:
    """Refuse (one line) an address that is not an IP, is taken, or is off loopback without ``public``; for a
    public one, the warning to show."""
    import ipaddress
    import socket
    loopback = host == "localhost"
    if host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"--host {host!r} is not an IP address (use 127.0.0.1)") from None
        loopback = ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)
    exposed = (f"--host {host} makes the dashboard reachable from the network: it has no login, and writes are "
               f"guarded only by the Host/Origin checks")
    if not loopback and not public:
        raise UsageError(f"{exposed}; add --public to serve there anyway, or use --host 127.0.0.1")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return None if loopback else exposed


def make_server(storage_url: str, host: str = "127.0.0.1", port: int = 8080, settings: Settings | None = None,
                allow_writes: bool = False) -> WSGIServer:
    """The bound (not yet serving) wsgiref server: ``serve_forever()``, then ``shutdown()`` and ``server_close()``.

    ``settings``: the caller's (the CLI's); without them the environment is read here (``Settings.from_env()``).
    """
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi
    settings = settings or Settings.from_env()
    folder = artifact_dir(storage_url, settings)
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna_storage(storage_url, settings.heartbeat_seconds)
    app = wsgi(storage, artifact_store=FileSystemArtifactStore(str(folder)))
    server = (_Server6 if ":" in host else _Server)((host, port), _QuietHandler)
    guard = DashboardGuard(app, host=host, port=server.server_port, storage=storage, storage_url=storage_url,
                           allow_writes=allow_writes, lock_timeout=settings.lock_timeout)
    server.set_app(guard)
    return server


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080, settings: Settings | None = None,
          allow_writes: bool = False) -> None:
    """Blocking: serves until interrupted (``settings``: as :func:`make_server`)."""
    server = make_server(storage_url, host, port, settings, allow_writes=allow_writes)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
