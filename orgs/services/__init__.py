"""Business logic for orgs: plain functions, keyword-only ``actor``.

Each validates, acts in a transaction, writes an AuditEvent, and defers side
effects with ``transaction.on_commit`` (DESIGN rule 3). Views only call these.
"""
