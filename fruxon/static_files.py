"""Static files (the admin's, Swagger UI's, ``fruxon/static``) under the ASGI server, without a thread hop.

WhiteNoise's middleware is sync-only: in an ASGI application Django would then run
every request, the async execute family included, through a thread just to pass it.
This subclass is async-capable. Its lookup is WhiteNoise's own: a dict lookup of the
files collected at start-up (``STATIC_ROOT``), or, in DEBUG and tests
(``WHITENOISE_AUTOREFRESH``), a filesystem search, which then runs in a thread.
A hit is answered exactly as WhiteNoise answers it (headers, compression, ranges);
anything else goes on down the chain.
"""
from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, *args, **kwargs):
        super().__init__(get_response, *args, **kwargs)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)
