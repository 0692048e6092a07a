"""Django's PostgreSQL backend, with pooled connections checked on checkout (see ``base``)."""
