"""The layering, checked: support knows nothing of the service, the domain does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("path", sorted((SERVICE / "support").glob("*.py")), ids=lambda path: path.name)
def test_support_imports_nothing_from_the_service(path: Path) -> None:
    # One support helper may build on another (the loop supervisor sleeps with `stopping`); nothing else.
    service = {module for module in imported_modules(path) if module.split(".")[0] == "service"}
    assert {module for module in service if not module.startswith("service.support.")} == set()


DOMAIN_MAY_IMPORT = ("service.domain", "service.support", "service.errors")
IO_LIBRARIES = {"asyncio", "sqlalchemy", "aiobotocore", "botocore", "starlette", "sqlite3", "socket", "httpx"}


@pytest.mark.parametrize("path", sorted((SERVICE / "domain").glob("*.py")), ids=lambda path: path.name)
def test_the_domain_is_pure(path: Path) -> None:
    modules = imported_modules(path)
    service = {module for module in modules if module.split(".")[0] == "service"}
    assert {module for module in service if not module.startswith(DOMAIN_MAY_IMPORT)} == set()
    assert {module for module in modules if module.split(".")[0] in IO_LIBRARIES} == set()
