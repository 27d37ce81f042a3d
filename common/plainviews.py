"""Plain Django views (no DRF: /healthz, /readyz, /metrics, the callback fast path) answer JSON
for every method. Imports no DRF: observability.metrics loads with the Celery app, before Django is
set up."""
from __future__ import annotations

import functools

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


def allow_methods(*methods: str):
    """A plain Django view that answers only `methods` (JSON 405 otherwise) and, taking no cookies,
    no CSRF check: a POST to /healthz gets a JSON 405, not Django's HTML CSRF page."""
    allowed = {m.upper() for m in methods} | ({"HEAD"} if "GET" in {m.upper() for m in methods} else set())

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in allowed:
                response = JsonResponse({"detail": f"Method {request.method} not allowed; use "
                                                   f"{', '.join(sorted(allowed))}."}, status=405)
                response["Allow"] = ", ".join(sorted(allowed))
                return response
            return view(request, *args, **kwargs)
        return wrapper
    return decorate

