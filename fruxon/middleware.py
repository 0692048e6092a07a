"""Request timing: stamps the start of each request and reports server overhead.

``X-Fruxon-Overhead-Ms`` = total server time minus time spent waiting on model
providers. The execute view sets it precisely (it knows the provider wait);
for every other response, and for execute errors raised before a run, the
whole server time is overhead.
"""
import time


class RequestTimerMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.fruxon_started = time.monotonic()
        response = self.get_response(request)
        if "X-Fruxon-Overhead-Ms" not in response:
            response["X-Fruxon-Overhead-Ms"] = f"{(time.monotonic() - request.fruxon_started) * 1000.0:.2f}"
        return response
