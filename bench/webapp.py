"""The web process of `bench_web.py`: referloop's app, plus a bare endpoint.

The bare endpoint is the benchmark's baseline and lives here, not in the
product: it reads the request's body and answers what `POST /events` answers
for one accepted event, without Redis, signature or parsing. So beside it, the
events endpoint is measured on the same server, loop, logging and transport.

Run: `python bench/webapp.py --host 127.0.0.1 --port 8000`, as
`python -m orchestrator web` runs (uvicorn, one process, INFO logs, no access log).
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator import logs
from orchestrator.web import create_app

BARE_PATH = "/bench/bare"
BARE_ANSWER = {"accepted": 1, "rejected": []}


async def bare(request: Request) -> JSONResponse:
    """Take the body in and answer at once: the least any endpoint does."""
    await request.body()
    return JSONResponse(BARE_ANSWER)


def create() -> Starlette:
    """`orchestrator.web.create_app()` with the bare endpoint mounted beside."""
    app = create_app()
    app.router.routes.append(Route(BARE_PATH, bare, methods=["POST"]))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    arguments = parser.parse_args()

    # As `referloop web` does (orchestrator/cli.py): referloop's log handler at
    # INFO, then uvicorn in this process with its access log off.
    logs.configure(logging.INFO, "text")
    uvicorn.run(
        create(),
        host=arguments.host,
        port=arguments.port,
        log_level="info",
        access_log=False,
    )


if __name__ == "__main__":
    main()
