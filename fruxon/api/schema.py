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
