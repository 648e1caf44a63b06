"""The gateway's one FastAPI app: every route of every protocol is declared on it
(``gateway.py`` and ``protocols/``), as methods of the ``Gateway`` deployment
class or of the route classes it inherits (Serve binds each route to the replica
through the class's MRO)."""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
from fastapi import FastAPI

from astromesh_ray import __version__
from astromesh_ray.serve.http import BodySizeLimit, install_error_handlers

api = FastAPI(
    title="astromesh-ray",
    version=__version__,
    description="YAML-declared AI agents served on Ray.",
)
api.add_middleware(BodySizeLimit)
install_error_handlers(api)
