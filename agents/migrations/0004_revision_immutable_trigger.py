"""Revisions are immutable in the database too (DESIGN rule 4).

``Revision.save``/``delete`` refuse in Python, but ``QuerySet.update()``, ``bulk_update``
and raw SQL do not go through them. A trigger refuses any UPDATE that changes what a
revision *is* (its spec, hash, agent, org, message, origin, author label or time).
``parent_id`` and ``created_by_id`` may still be nulled: Django does that (SET_NULL) while
deleting a whole agent with its revisions, or a user.
"""
from django.db import migrations

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION fruxon_revision_immutable() RETURNS trigger AS $$
BEGIN
    IF NEW.spec::jsonb IS DISTINCT FROM OLD.spec::jsonb OR NEW.content_hash IS DISTINCT FROM OLD.content_hash
       OR NEW.agent_id IS DISTINCT FROM OLD.agent_id OR NEW.organization_id IS DISTINCT FROM OLD.organization_id
       OR NEW.created_at IS DISTINCT FROM OLD.created_at OR NEW.id IS DISTINCT FROM OLD.id
       OR NEW.message IS DISTINCT FROM OLD.message OR NEW.created_by_label IS DISTINCT FROM OLD.created_by_label
       OR NEW.origin::jsonb IS DISTINCT FROM OLD.origin::jsonb THEN
        RAISE EXCEPTION 'revision % is immutable; create a new revision instead', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""
_PG_TRIGGER = (
    "DROP TRIGGER IF EXISTS agents_revision_immutable ON agents_revision",
    "CREATE TRIGGER agents_revision_immutable BEFORE UPDATE ON agents_revision "
    "FOR EACH ROW EXECUTE FUNCTION fruxon_revision_immutable()",
)
_PG_DROP = (
    "DROP TRIGGER IF EXISTS agents_revision_immutable ON agents_revision",
    "DROP FUNCTION IF EXISTS fruxon_revision_immutable()",
)
_SQLITE_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS agents_revision_immutable
BEFORE UPDATE ON agents_revision
WHEN NEW.spec IS NOT OLD.spec OR NEW.content_hash IS NOT OLD.content_hash OR NEW.agent_id IS NOT OLD.agent_id
     OR NEW.organization_id IS NOT OLD.organization_id OR NEW.created_at IS NOT OLD.created_at OR NEW.id IS NOT OLD.id
     OR NEW.message IS NOT OLD.message OR NEW.created_by_label IS NOT OLD.created_by_label
     OR NEW.origin IS NOT OLD.origin
BEGIN
    SELECT RAISE(ABORT, 'revisions are immutable; create a new revision instead');
END;
"""


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for statement in (_PG_FUNCTION, *_PG_TRIGGER):
            schema_editor.execute(statement, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(_SQLITE_TRIGGER, params=None)


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for statement in _PG_DROP:
            schema_editor.execute(statement, params=None)
    elif vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS agents_revision_immutable")


class Migration(migrations.Migration):
    dependencies = [("agents", "0003_agent_gating_dataset")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
