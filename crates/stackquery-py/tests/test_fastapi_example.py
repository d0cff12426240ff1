"""The README's FastAPI example (``examples/python/fastapi_sqlite.py``), driven through
its ASGI app: one backend call for concurrent cold reads, a write that updates the
cache, a 404, and a restart that answers from the SQLite file without the backend."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.asyncio, pytest.mark.real_io]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python" / "fastapi_sqlite.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_sqlite_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_fastapi_example_caches_writes_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACKQUERY_DB", str(tmp_path / "users.db"))
    ex = load_example()
    app = ex.app
    transport = httpx.ASGITransport(app=app)

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            replies = await asyncio.gather(*(http.get("/users/7") for _ in range(10)))
            assert {r.status_code for r in replies} == {200}
            assert {r.json()["name"] for r in replies} == {"Ada"}
            assert ex.BACKEND_CALLS["reads"] == 1, "ten concurrent cold reads, one call"

            put = await http.put("/users/7", json={"name": "Ada Lovelace"})
            assert put.status_code == 200 and put.json() == {"id": 7, "name": "Ada Lovelace"}
            got = await http.get("/users/7")
            assert got.json()["name"] == "Ada Lovelace"
            assert ex.BACKEND_CALLS == {"reads": 1, "writes": 1}

            assert (await http.get("/users/99")).status_code == 404

    # A restart: a new client (new process state) on the same SQLite file.
    reads = ex.BACKEND_CALLS["reads"]
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            got = await http.get("/users/7")
            assert got.json() == {"id": 7, "name": "Ada Lovelace"}
            assert ex.BACKEND_CALLS["reads"] == reads, "served from SQLite, not the backend"
            stats = (await http.get("/stats")).json()
            assert stats["l2_hits"] >= 1
