"""(being written)"""

# No `from __future__ import annotations`: FastAPI must see real annotation objects.
from astromesh_ray.serve.gateway_core import GatewayCore


class A2ARoutes(GatewayCore):
    """(being written)"""
