"""FastAPI dependencies: the caller (from a Bearer token) and the stores.

Routers whose every route needs a caller use ``route_class=AuthenticatedRoute``: the token is
checked before the request's body is read or parsed, so a request without one gets 401 whatever
its body (FastAPI reads the body before it resolves dependencies).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute

from apps.api.errors import ApiError
from apps.api.http_limits import HttpLimiter
from apps.api.stores.handled import HandledRequests
from apps.api.stores.projects import ProjectStore
from apps.api.token_keys import verify_token
from apps.api.websocket.auth import AuthError, Principal, TokenVerifier, extract_token


async def authenticate(request: Request) -> Principal:
    """The request's caller, from its Bearer token (401 without a valid one); checked once. A
    token signed with a key just rotated in gets the keys refreshed first (apps.api.token_keys)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    verifier: TokenVerifier = request.app.state.verifier
    token = extract_token(None, authorization=request.headers.get("authorization"))
    try:
        principal = await verify_token(verifier, getattr(request.app.state, "token_keys", None), token)
    except AuthError as exc:
        raise ApiError(
            401, exc.message, code=exc.code, reason=exc.reason, headers={"WWW-Authenticate": "Bearer"}
        ) from None
    request.state.principal = principal
    await _limit_caller(request, principal)
    return principal


async def _limit_caller(request: Request, principal: Principal) -> None:
    """429 past the caller's HTTP rate limit (apps.api.http_limits), once the token is known good."""
    limiter: HttpLimiter | None = getattr(request.app.state, "http_limits", None)
    if limiter is None:
        return
    refusal = await limiter.check_caller(principal.user_id, principal.roles)
    if refusal is not None:
        raise ApiError(
            429, refusal.message, headers={"Retry-After": str(refusal.retry_after)}, retry_after=refusal.retry_after
        )


class AuthenticatedRoute(APIRoute):
    """A route that authenticates its caller before FastAPI reads the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            await authenticate(request)
            return await handler(request)

        return authenticated


def require_service_or_admin(user: Principal, request: Request, refusal: str, code: str | None = None) -> None:
    """403 (``refusal``, ``{role}`` the service role's name) unless ``user`` is an admin or has
    ``JWT_SERVICE_ROLE``."""
    role = request.app.state.settings.jwt_service_role
    if not user.is_admin and role not in user.roles:
        raise ApiError(403, refusal.format(role=role), code=code)


class ServiceOrAdminRoute(AuthenticatedRoute):
    """A route for services and administrators: 401 without a token, then 403 unless its roles
    include ``JWT_SERVICE_ROLE`` or it is an admin's, both before FastAPI reads the body (so any
    other token is 403 whatever the body). Subclasses say what the refusal says: ``refusal``
    (``{role}`` is the service role's name) and ``refusal_code`` (None: 403's default code)."""

    refusal = "This endpoint is for administrators and services (the {role!r} role)"
    refusal_code: str | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        refusal, code = self.refusal, self.refusal_code

        async def services_and_admins_only(request: Request) -> Response:
            require_service_or_admin(await authenticate(request), request, refusal, code)
            return await handler(request)

        return services_and_admins_only


async def current_principal(request: Request) -> Principal:
    return await authenticate(request)


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "This endpoint is for administrators")
    return principal


async def project_store(request: Request) -> ProjectStore:
    store: ProjectStore = request.app.state.projects
    return store


async def handled_requests(request: Request) -> HandledRequests:
    handled: HandledRequests = request.app.state.handled
    return handled


# Every dependency is a coroutine function: FastAPI runs a plain function in its thread pool, a
# thread hand-off per request for what is an attribute read (test_app checks that none is plain).
CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, Depends(admin_principal)]
ProjectStoreDep = Annotated[ProjectStore, Depends(project_store)]
HandledRequestsDep = Annotated[HandledRequests, Depends(handled_requests)]
