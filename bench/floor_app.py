"""The framework floor of `python -m bench serve` (`bench.bench_serve.floor`): a uvicorn factory
of a FastAPI app with one POST route that reads the body and parses it with orjson, as the
service's route does first, and answers its sme_id; and the readiness route the bench waits
for. Nothing is validated, scored or stored: the req/s and latency of the stack alone under the
service's load."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, Response


async def score(request: Request) -> Response:
    doc = orjson.loads(await request.body())
    return Response(orjson.dumps({"sme_id": doc.get("sme_id")}), media_type="application/json")


async def ready() -> dict[str, bool]:
    return {"ready": True}


def floor_app() -> FastAPI:
    app = FastAPI()
    app.add_api_route("/v1/scores", score, methods=["POST"])
    app.add_api_route("/readyz", ready, methods=["GET"])
    return app
