"""`python -m bench.webhook_receiver PORT`: the application side of the relay-webhooks benchmark target.

Answers every POST /hooks 204 at once (after checking the signature header is there) and counts them;
GET /count tells how many arrived, and how many distinct webhook-ids.
"""

from __future__ import annotations

import sys

from aiohttp import web


def main(port: int) -> None:
    ids: set[str] = set()
    posts = 0

    async def hooks(request: web.Request) -> web.Response:
        nonlocal posts
        await request.read()
        if not request.headers.get("webhook-signature", "").startswith("v1,"):
            return web.Response(status=400)
        posts += 1
        ids.add(request.headers["webhook-id"])
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"posts": posts, "ids": len(ids)})

    app = web.Application()
    app.router.add_post("/hooks", hooks)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
