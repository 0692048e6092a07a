"""Give each secret that has no allowedHosts the hosts its org's running revisions send it to.

Before ``allowedHosts`` existed a secret could go anywhere; from now on the engine
sends it only to an allowed host. So that upgrading breaks no running agent, a
secret with empty ``allowed_hosts`` gets the hosts to which the deployed revisions
of its org's agents send it (a model's ``baseUrl`` host, or the provider's default
when there is none), plus those of the revisions such a revision pins as
sub-agents. The extraction is the engine's own (``agents.engine.destinations``),
the one revision creation checks against. Secrets that already have hosts are
left alone; reversing does nothing (the hosts stay).
"""
from django.db import migrations

from agents.engine.destinations import hosts_by_secret, referenced_pins


def backfill(apps, schema_editor):
    Secret = apps.get_model("orgs", "Secret")
    Agent = apps.get_model("agents", "Agent")
    Revision = apps.get_model("agents", "Revision")
    org_ids = set(Secret.objects.filter(allowed_hosts=[]).values_list("organization_id", flat=True))
    for org_id in sorted(org_ids):
        agents = dict(Agent.objects.filter(organization_id=org_id).values_list("slug", "id"))
        wanted = set(Agent.objects.filter(organization_id=org_id, deployed_revision__isnull=False)
                     .values_list("deployed_revision_id", flat=True))
        specs, seen = [], set()
        while wanted - seen:  # deployed revisions, then the sub-agent revisions they pin, transitively
            batch = wanted - seen
            seen |= batch
            for spec in Revision.objects.filter(organization_id=org_id, pk__in=batch).values_list("spec", flat=True):
                specs.append(spec)
                wanted |= {rev for slug, rev in referenced_pins(spec) if slug in agents}
        found = hosts_by_secret(specs)
        for secret in Secret.objects.filter(organization_id=org_id, allowed_hosts=[], name__in=list(found)):
            secret.allowed_hosts = sorted(found[secret.name])
            secret.save(update_fields=["allowed_hosts"])


class Migration(migrations.Migration):

    dependencies = [
        ("orgs", "0003_security_fields"),
        ("agents", "0004_revision_immutable_trigger"),
    ]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
