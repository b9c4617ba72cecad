"""The framework's ceiling: an aiohttp hello-world on uvloop, same process model as the agent."""

import sys

import uvloop
from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=b'{"hello":"world"}', content_type="application/json")


def main() -> None:
    # Optional second argument: a file whose bytes /static serves (a body the size of the API's answer).
    static = open(sys.argv[2], "rb").read() if len(sys.argv) > 2 else b"{}"

    async def static_body(request: web.Request) -> web.Response:
        return web.Response(body=static, content_type="application/json")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/static", static_body)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
