"""FastAPI dependencies: the caller (from a Bearer token) and the stores."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from apps.api.errors import ApiError
from apps.api.stores.projects import ProjectStore
from apps.api.websocket.auth import AuthError, Principal, TokenVerifier, extract_token


def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier


def current_principal(request: Request, verifier: Annotated[TokenVerifier, Depends(_verifier)]) -> Principal:
    token = extract_token(None, authorization=request.headers.get("authorization"))
    try:
        return verifier.verify(token)
    except AuthError as exc:
        raise ApiError(
            401, exc.message, code=exc.code, reason=exc.reason, headers={"WWW-Authenticate": "Bearer"}
        ) from None


def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "This endpoint is for administrators")
    return principal


def project_store(request: Request) -> ProjectStore:
    store: ProjectStore = request.app.state.projects
    return store


CurrentUser = Annotated[Principal, Depends(current_principal)]
AdminUser = Annotated[Principal, Depends(admin_principal)]
ProjectStoreDep = Annotated[ProjectStore, Depends(project_store)]
