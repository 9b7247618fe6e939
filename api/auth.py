"""Bearer tokens to tenants, compared in constant time."""

from __future__ import annotations

import hmac

from flask import request

from api.errors import ApiError
from worker.settings import Tenant


def authenticate(tenants: dict[str, Tenant]) -> Tenant:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send the API token as 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    presented = token.strip().encode()
    match = None
    for tenant in tenants.values():
        # Compare against every tenant, without stopping early, so timing tells nothing.
        if tenant.token and hmac.compare_digest(presented, tenant.token.encode()):
            match = tenant
    if match is None:
        raise ApiError(401, "unauthorized", "the API token is not valid", headers={"WWW-Authenticate": "Bearer"})
    return match
