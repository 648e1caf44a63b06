"""The gateway's one FastAPI app: every route of every protocol is declared on it
(``gateway.py`` and ``protocols/``), as methods of the ``Gateway`` deployment
class or of the route classes it inherits (Serve binds each route to the replica
through the class's MRO)."""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
from fastapi import FastAPI

from astromesh_ray import __version__
from astromesh_ray.serve.auth import Gate
from astromesh_ray.serve.http import BodySizeLimit, install_error_handlers
from astromesh_ray.serve.openapi import install_openapi

api = FastAPI(
    title="astromesh-ray",
    version=__version__,
    description="YAML-declared AI agents served on Ray.",
)
api.add_middleware(BodySizeLimit)
# Outermost: CORS, keys, scopes and rate limits before a byte of the body is read.
api.add_middleware(Gate, routes=api)
install_error_handlers(api)
install_openapi(api)  # /openapi.json: every error status, the Error schema, bearerAuth
