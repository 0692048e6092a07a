"""Export and import between organizations, and one-call promotion (API.md "Export and import").

The document format is ``fruxon.export/v1``, described by the JSON Schema
``deployments/schemas/fruxon.export.v1.json``:

* :mod:`.document` - the schema and every check an import runs first
  (``validate_document`` -> ``ValidDocument``, or 400 ``invalid_export``);
* :mod:`.export` - ``export_organization`` / ``export_revision``: read only,
  never a secret value;
* :mod:`.plan` - ``build_plan``: created / updated / unchanged per kind, the
  missing secrets and integrations; reads only;
* :mod:`.apply` - ``import_document``: dry run, or the plan applied in one
  transaction through the apps' services;
* :mod:`.promote` - ``promote``: export + import + deploy of one revision.

Ids in a document are the source's and are never used as database ids:
everything is created in the target by natural keys.
"""
from .apply import ImportResult, import_document
from .document import FORMAT, ValidDocument, parse_json, schema, validate_document
from .export import export_organization, export_revision
from .plan import Plan, build_plan
from .promote import promote

__all__ = [
    "FORMAT",
    "ImportResult",
    "Plan",
    "ValidDocument",
    "build_plan",
    "export_organization",
    "export_revision",
    "import_document",
    "parse_json",
    "promote",
    "schema",
    "validate_document",
]
