"""gzip for API responses, as Consul does for clients that accept it (browsers, requests-based clients).

Only bodies of at least a packet are worth it: small answers (and every client that does not send
`Accept-Encoding: gzip`, such as wrk or urllib) pay one length check. Responses that are already
encoded (the UI's pre-gzipped files and cached bodies) are left alone.
"""

from __future__ import annotations

from aiohttp import web

GZIP_MIN = 1400  # bytes: about one TCP segment


def gzip_if_worth_it(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Turn on gzip for a large plain response when the client accepts it."""
    if type(response) is not web.Response:
        return
    body = response.body
    if not isinstance(body, bytes) or len(body) < GZIP_MIN or "Content-Encoding" in response.headers:
        return
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.headers["Vary"] = "Accept-Encoding"
        response.enable_compression(web.ContentCoding.gzip)
