"""drf-spectacular extensions: describe our authenticators in the OpenAPI schema."""
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "fruxon.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-API-KEY",
                "description": "An org API key fx_live_...; also accepted as 'Authorization: Bearer fx_live_...'."}


class UserTokenScheme(OpenApiAuthenticationExtension):
    target_class = "fruxon.api.authentication.UserTokenAuthentication"
    name = "PersonalToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A personal token fxu_... from POST /v1/auth/token."}


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "fruxon.api.authentication.SessionAuthentication"
    name = "Session"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}


# --- The error shape, on every operation -------------------------------------------------------

ERROR_SCHEMA = {
    "type": "object",
    "description": 'Every error answer: {"error": {"code", "message", "details"}} (API.md "Errors").',
    "properties": {"error": {
        "type": "object", "required": ["code", "message", "details"],
        "properties": {
            "code": {"type": "string", "description": "snake_case, e.g. invalid_request, not_found, not_ready"},
            "message": {"type": "string", "description": "a human sentence"},
            "details": {"type": "object", "additionalProperties": True},
        },
    }},
    "required": ["error"],
}

DATABASE_UNAVAILABLE = ("database_unavailable: the database cannot be reached right now; nothing was done "
                        "(Retry-After says when to try again)")
_COMMON_ERRORS = {
    "400": "invalid_request: malformed JSON (or nested deeper than FRUXON_MAX_JSON_DEPTH), a NUL (%00) in the URL, "
           "a cursor this list did not hand out, or failed validation (details.fields names each field)",
    "401": "unauthenticated: no or bad credentials",
    "403": "forbidden: the member lacks the role, or the API key the scope, for this method",
    "404": "not_found: unknown org, not a member, unknown object, or another org's object",
    "405": "method_not_allowed",
}
# Operations that store an outbound URL (fruxon.egress): their 400 also means egress_denied.
_EGRESS_CHECKED = {
    ("/v1/{tenant}/agents/{agent}/revisions", "post"): "a model baseUrl",
    ("/v1/{tenant}/agents/{agent}:promote", "post"): "a model or integration baseUrl",
    ("/v1/{tenant}/import", "post"): "a model or integration baseUrl",
    ("/v1/{tenant}/integrations", "post"): "config.baseUrl",
    ("/v1/{tenant}/integrations/{slug}", "patch"): "config.baseUrl",
    ("/v1/{tenant}/agents/{agent}/budget", "put"): "alertWebhook",
    ("/v1/{tenant}/agents/{agent}/evaluation-schedule", "put"): "alertWebhook",
    ("/v1/{tenant}/agents/{agent}/deploy-policy", "put"): "alertWebhook",
    ("/v1/{tenant}/datasets", "post"): "an llmJudge metric's model baseUrl",
    ("/v1/{tenant}/datasets/{dataset}", "patch"): "an llmJudge metric's model baseUrl",
}
EGRESS_DENIED = ("egress_denied: {what} is not an http(s) URL, carries a user name or password, or names "
                 "localhost or an internal address (loopback, private, link-local, cloud metadata) that "
                 "FRUXON_EGRESS_ALLOW does not allow (details.fields names it)")
# Operations that store an llmJudge model (orgs.services.secrets.check_destinations): 400 secret_destination too.
# (Revision create, import and promote document it on their own views.)
_SECRET_DESTINATION_CHECKED = {("/v1/{tenant}/datasets", "post"), ("/v1/{tenant}/datasets/{dataset}", "patch")}
SECRET_DESTINATION = ("secret_destination: an llmJudge metric's model would send a secret to a host outside its "
                      "allowedHosts and its integrations' hosts (details: secret, path, host); nothing written")
# Operations anyone may call: no 403 (a bad API key or token sent along is still a 401).
_ANONYMOUS = {("/v1/auth/token", "post")}
_METHODS = ("get", "put", "post", "patch", "delete")


# Rate limits (fruxon.ratelimit, issue 14 item 1) apply to every tenant operation: 429 with these headers.
RATE_LIMITED = ("rate_limited: past the requests per minute of the API key or the org (for executes also "
                "executions or tokens per minute); Retry-After says when the request would pass")
_RATE_HEADERS = {
    "RateLimit-Limit": "the limit (per minute) closest to refusing: the key's or the org's",
    "RateLimit-Remaining": "what is left of it in the current 60 s window",
    "RateLimit-Reset": "seconds until its oldest counted use leaves the window",
}


def _rate_headers(*, refused: bool) -> dict:
    # RateLimit-* come with rate_limited refusals and with answers a limit applied to; another 429
    # (budget_exceeded) carries Retry-After only.
    when = " (on rate_limited)" if refused else " (only when a limit applies)"
    headers = {name: {"schema": {"type": "integer"}, "required": False, "description": description + when}
               for name, description in _RATE_HEADERS.items()}
    if refused:
        headers["Retry-After"] = {"schema": {"type": "integer"}, "required": True,
                                  "description": "whole seconds until the request would pass"}
    return headers


def _error_response(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _accept_numbers_for_decimals(schemas: dict) -> None:
    """Request bodies take money and other decimals as a string ("50.00") or a JSON number (50):
    DRF's DecimalField parses both; answers always carry strings."""
    for name, component in schemas.items():
        if not name.endswith("Request"):
            continue
        for prop, spec in (component.get("properties") or {}).items():
            if spec.get("type") == "string" and spec.get("format") == "decimal":
                number = {"type": "number"}
                for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                    if bound in spec:
                        number[bound] = spec[bound]
                text = {k: v for k, v in spec.items() if k not in {"nullable", "description"}}
                component["properties"][prop] = {"oneOf": [text, number],
                                                 **({"description": spec["description"]} if "description" in spec else {}),
                                                 **({"nullable": True} if spec.get("nullable") else {})}


def add_error_responses(result, generator, request, public):
    """POSTPROCESSING_HOOK: the Error component and the errors any operation can answer.

    It also marks every filter parameter ``allowEmptyValue`` (an empty filter means none).

    An operation's own declared error responses (409 not_ready, 429 budget_exceeded, ...) are
    kept; their bodies are pointed at the Error component when they declared none.
    """
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    _accept_numbers_for_decimals(result["components"]["schemas"])
    for path, item in result.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            for parameter in operation.get("parameters", []):
                # Filters follow one convention: ?agent= (empty) means "no filter", as if absent.
                if parameter.get("in") == "query" and parameter.get("name") not in {"cursor", "limit"}:
                    parameter["allowEmptyValue"] = True
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status.startswith(("4", "5")) and "content" not in response:
                    response["content"] = _error_response("")["content"]
            wanted = dict(_COMMON_ERRORS)
            if (path, method) in _ANONYMOUS:
                wanted.pop("403")
            if "{tenant}" not in path and "{" not in path and method == "get":
                wanted.pop("404")
            if method in ("post", "put", "patch"):
                wanted["413"] = "payload_too_large: the body is over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default)"
            if "{tenant}" in path:
                wanted["429"] = RATE_LIMITED
            for status, description in wanted.items():
                responses.setdefault(status, _error_response(description))
            if "{tenant}" in path:
                too_many = responses["429"]
                if RATE_LIMITED not in too_many.get("description", ""):
                    too_many["description"] = "; ".join(filter(None, [too_many.get("description"), RATE_LIMITED]))
                too_many.setdefault("headers", {}).update(_rate_headers(refused=True))
                for status, response in responses.items():
                    if status.startswith("2"):
                        response.setdefault("headers", {}).update(_rate_headers(refused=False))
            # Any operation: PostgreSQL unreachable (fruxon.api.errors); merged into a declared 503 (ledger_unavailable).
            unavailable = responses.setdefault("503", _error_response(""))
            if DATABASE_UNAVAILABLE not in unavailable.get("description", ""):
                unavailable["description"] = "; ".join(filter(None, [unavailable.get("description"),
                                                                      DATABASE_UNAVAILABLE]))
            unavailable.setdefault("headers", {})["Retry-After"] = {
                "schema": {"type": "integer"}, "description": "seconds to wait before retrying"}
            if (path, method) in _EGRESS_CHECKED:
                bad_request = responses["400"]
                bad_request["description"] = "; ".join(filter(None, [
                    bad_request.get("description"), EGRESS_DENIED.format(what=_EGRESS_CHECKED[path, method])]))
            if (path, method) in _SECRET_DESTINATION_CHECKED:
                bad_request = responses["400"]
                bad_request["description"] = "; ".join(filter(None, [bad_request.get("description"),
                                                                      SECRET_DESTINATION]))
    return result
