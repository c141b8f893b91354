"""The OpenAPI document, as served at /openapi.json and checked in at schemas/openapi.json.

    python -m vfence.controller.openapi > schemas/openapi.json
"""

from __future__ import annotations

import json
from typing import Any


def spec() -> dict[str, Any]:
    from .api import create_app

    return create_app(None).openapi()  # type: ignore[arg-type]  # routes only, no service


def render() -> str:
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
