"""Training methods: one file per method, all registered in :data:`METHODS` on import."""

import importlib
import pkgutil

from jaxquant.methods.base import (
    METHODS,
    Method,
    MethodContext,
    get_method,
    method_param_names,
    policy_from_config,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "common"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "get_method",
    "method_param_names",
    "policy_from_config",
    "register_method",
]
