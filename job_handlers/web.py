"""`job-handlers web`: the small HTTP service people and mail providers talk to.

Unsubscribe (RFC 8058): `GET /unsubscribe?token=…` shows a confirmation page (mail scanners
follow GET links, so GET changes nothing); `POST /unsubscribe?token=…` unsubscribes — the
one-click POST mail providers send (`List-Unsubscribe=One-Click`) and the page's button alike.
The token is HMAC-signed (`notify.tokens`); it is the only credential, so there is no session
to forge. `/healthz` says the process is alive.

Status page (`/status`): slot health and lag, queue depth per task, expiry lateness, the DLQ with
a retry button, recent deliveries. It needs `JOB_STATUS_TOKEN`: the login form exchanges the
token for an HttpOnly, SameSite=Strict session cookie (an HMAC of the token, never the token);
every POST must carry the page's CSRF field (an HMAC of the session) and, when the browser sends
one, an Origin equal to the page's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import jinja2
import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from job_handlers import dlq, status
from job_handlers.notify import tokens
from job_handlers.settings import WorkerSettings

log = logging.getLogger(__name__)

UNSUBSCRIBE = """
INSERT INTO grails_workers.notification_settings (user_id, unsubscribed_at)
SELECT id, now() FROM users WHERE id = %(user_id)s
ON CONFLICT (user_id) DO UPDATE
   SET unsubscribed_at = coalesce(notification_settings.unsubscribed_at, now())
"""

_pages = jinja2.Environment(loader=jinja2.PackageLoader("job_handlers", "templates/web"),
                            autoescape=True, undefined=jinja2.StrictUndefined)


def _page(title: str, message: str, status: int = 200, confirm: bool = False,
          action: str = "") -> HTMLResponse:
    html = _pages.get_template("page.html").render(title=title, message=message,
                                                   confirm=confirm, action=action)
    return HTMLResponse(html, status_code=status,
                        headers={"cache-control": "no-store", "referrer-policy": "no-referrer",
                                 "x-frame-options": "DENY"})


SESSION_COOKIE = "grails_status"


def _mac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:,.1f} s"


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    amount, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            break
        amount /= 1024
    return f"{amount:,.0f} B" if unit == "B" else f"{amount:,.1f} {unit}"


def create_app(settings: WorkerSettings, pool: AsyncConnectionPool | None = None) -> Starlette:
    if settings.unsubscribe_secret is None:
        raise ValueError("JOB_UNSUBSCRIBE_SECRET is not set: unsubscribe links cannot be checked")
    secret = settings.unsubscribe_secret.get_secret_value()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        own = pool is None
        db = pool or AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=4, open=False,
            kwargs={"application_name": "job-handlers-web"})
        if own:
            await db.open()
        try:
            yield {"pool": db}
        finally:
            if own:
                await db.close()

    def user_from(request: Request) -> int | None:
        try:
            return tokens.read_token(secret, request.query_params.get("token", ""))
        except tokens.InvalidToken:
            return None

    async def unsubscribe_page(request: Request) -> Response:
        if user_from(request) is None:
            return _page("Link not valid", "This unsubscribe link is not valid. Use the link "
                         "from your most recent email.", status=400)
        return _page("Unsubscribe", "Stop all Grails notifications to you? You can turn them "
                     "on again in your account settings.", confirm=True,
                     action=str(request.url.include_query_params()))

    async def unsubscribe(request: Request) -> Response:
        user_id = user_from(request)
        if user_id is None:
            return _page("Link not valid", "This unsubscribe link is not valid.", status=400)
        db: AsyncConnectionPool = request.state.pool
        async with db.connection() as conn:
            await conn.execute(UNSUBSCRIBE, {"user_id": user_id})
        one_click = (await request.body()).strip() == b"List-Unsubscribe=One-Click"
        log.info("user %d unsubscribed (%s)", user_id, "one-click" if one_click else "page")
        return _page("Unsubscribed", "You will not receive Grails notifications any more.")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    status_token = (settings.status_token.get_secret_value() if settings.status_token
                    else None)

    def session_of(request: Request) -> str | None:
        if status_token is None:
            return None
        cookie = request.cookies.get(SESSION_COOKIE, "")
        expected = _mac(status_token, "session")
        return cookie if hmac.compare_digest(cookie, expected) else None

    def login_page(error: str | None = None, status_code: int = 200) -> HTMLResponse:
        html = _pages.get_template("login.html").render(error=error)
        return HTMLResponse(html, status_code=status_code,
                            headers={"cache-control": "no-store", "x-frame-options": "DENY"})

    async def status_page(request: Request) -> Response:
        if status_token is None:
            return PlainTextResponse("the status page is off: set JOB_STATUS_TOKEN\n", 404)
        session = session_of(request)
        if session is None:
            return login_page()
        report = await run_in_threadpool(_read_status, settings.database_url)
        retried = request.query_params.get("retried")
        html = _pages.get_template("status.html").render(
            report=report, csrf=_mac(status_token, f"csrf:{session}"),
            now=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            flash=f"Job {retried} is back in the queue." if retried and retried.isdigit()
            else None, seconds=_seconds, size=_size)
        return HTMLResponse(html, headers={"cache-control": "no-store",
                                           "x-frame-options": "DENY",
                                           "referrer-policy": "same-origin"})

    async def login(request: Request) -> Response:
        if status_token is None:
            return PlainTextResponse("the status page is off: set JOB_STATUS_TOKEN\n", 404)
        form = await request.form()
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given.encode(), status_token.encode()):
            log.warning("status page: wrong token from %s",
                        request.client.host if request.client else "?")
            return login_page("That token is not right.", 403)
        response = RedirectResponse("/status", status_code=303)
        response.set_cookie(SESSION_COOKIE, _mac(status_token, "session"), httponly=True,
                            samesite="strict", path="/status",
                            secure=request.url.scheme == "https")
        return response

    async def retry_job(request: Request) -> Response:
        session = session_of(request)
        if status_token is None or session is None:
            return PlainTextResponse("not logged in to the status page\n", 403)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return PlainTextResponse("cross-origin request refused\n", 403)
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")),
                                   _mac(status_token, f"csrf:{session}")):
            return PlainTextResponse("missing or wrong CSRF token\n", 403)
        job_id = int(request.path_params["job_id"])
        retried = await run_in_threadpool(_retry, settings.database_url, job_id)
        if not retried:
            return PlainTextResponse(f"job {job_id} is not in the dead-letter queue\n", 404)
        log.info("status page: job %d retried", job_id)
        return RedirectResponse(f"/status?retried={job_id}", status_code=303)

    return Starlette(
        routes=[
            Route("/unsubscribe", unsubscribe_page, methods=["GET"]),
            Route("/unsubscribe", unsubscribe, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/status", status_page, methods=["GET"]),
            Route("/status/login", login, methods=["POST"]),
            Route("/status/dlq/{job_id:int}/retry", retry_job, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _read_status(database_url: str) -> status.StatusReport:
    with psycopg.connect(database_url, application_name="job-handlers-web") as conn:
        return status.read(conn)


def _retry(database_url: str, job_id: int) -> list[int]:
    with psycopg.connect(database_url, application_name="job-handlers-web") as conn:
        return dlq.retry(conn, [job_id])
