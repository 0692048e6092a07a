"""Static files (the admin's, Swagger UI's, ``fruxon/static``) under the ASGI server, without a thread hop.

WhiteNoise's middleware is sync-only: in an ASGI application Django would then run
every request, the async execute family included, through a thread just to pass it.
This subclass is async-capable. Its lookup is WhiteNoise's own: a dict lookup of the
files collected at start-up (``STATIC_ROOT``), or, in DEBUG (``WHITENOISE_AUTOREFRESH``),
a filesystem search, which then runs in a thread (and only for URLs under a static
prefix, so API requests never take that hop).

A hit is answered exactly as WhiteNoise answers it (its status and headers: conditional
304s, ``Range`` 206/416, a ``.gz``/``.br`` variant for a client that accepts it, 405 for
other methods than GET/HEAD). Only the body differs in async mode: WhiteNoise gives
Django a sync file, which Django's ASGI handler would read whole through a
thread-sensitive ``sync_to_async(list)`` (creating the request's own executor thread
for it) with a warning; here the file is read in 64 KiB chunks on the event loop's
default executor, and closed when the body ends or the client goes away.
Anything else goes on down the chain.
"""
from __future__ import annotations

import asyncio

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseFileResponse, WhiteNoiseMiddleware

CHUNK = 64 * 1024  # Django's ASGI handler sends the body in chunks of this size too


async def _read_chunks(file):
    """The body of ``file``, read in the loop's default executor, a chunk at a time."""
    loop = asyncio.get_running_loop()
    try:
        while chunk := await loop.run_in_executor(None, file.read, CHUNK):
            yield chunk
    finally:
        file.close()


async def _no_body():
    return
    yield  # an async generator that yields nothing


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, *args, **kwargs):
        super().__init__(get_response, *args, **kwargs)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        # In autorefresh mode only these URL prefixes can name a file (WhiteNoise's directories
        # and, with finders, STATIC_URL); anything else skips the search and its thread.
        self._prefixes = tuple({prefix for _root, prefix in self.directories} | {self.static_prefix})

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        path = request.path_info
        if not self.autorefresh:
            static_file = self.files.get(path)
        elif path.startswith(self._prefixes):
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(path)
        else:
            static_file = None
        if static_file is None:
            return await self.get_response(request)
        return self.aserve(static_file, request)

    @staticmethod
    def aserve(static_file, request):
        """``WhiteNoiseMiddleware.serve`` with an async body (see the module's docstring)."""
        response = static_file.get_response(request.method, request.META)
        file = response.file
        http_response = WhiteNoiseFileResponse(_read_chunks(file) if file is not None else _no_body(),
                                               status=int(response.status))
        if file is not None:
            # Closed by the body's end, or by Django closing the response if the body never ran.
            http_response._resource_closers.append(file.close)
        del http_response["content-type"]  # WhiteNoise's headers below carry the real one
        for key, value in response.headers:
            http_response[key] = value
        return http_response
