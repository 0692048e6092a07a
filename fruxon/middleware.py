"""Request timing: stamps the start of each request and reports server overhead.

``X-Fruxon-Overhead-Ms`` = total server time minus time spent waiting on model
providers. The execute view sets it precisely (it knows the provider wait);
for every other response, and for execute errors raised before a run, the
whole server time is overhead.

Sync and async capable: under ASGI a sync-only middleware at the top of the
stack would make Django hop threads twice more per request (sync -> async ->
sync), which costs more than the whole header.
"""
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction


def _stamp(request, response):
    if "X-Fruxon-Overhead-Ms" not in response:
        response["X-Fruxon-Overhead-Ms"] = f"{(time.monotonic() - request.fruxon_started) * 1000.0:.2f}"
    return response


class RequestTimerMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        request.fruxon_started = time.monotonic()
        return _stamp(request, self.get_response(request))

    async def __acall__(self, request):
        request.fruxon_started = time.monotonic()
        return _stamp(request, await self.get_response(request))
