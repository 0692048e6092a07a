"""The HTTP API's shared machinery: tenancy base classes, auth, errors, pagination."""
