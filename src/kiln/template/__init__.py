"""Image templates: AIB JSON in every form users write -> one frozen, validated model.

`load_template(path)` / `load_template_data(data)` return the templates of a file or raise
`ValidationFailed` with every problem; `dump_template(t)` writes one back in the 2025-10-01 shape.
The pipeline, one module per step: forms (which form is this) -> arm (deployment expressions) ->
normalize (old apiVersions) -> schema (JSON Schema) -> checks (semantics) -> convert (model).
"""

from kiln.template.dump import dump_template
from kiln.template.load import load_template, load_template_data

__all__ = ["dump_template", "load_template", "load_template_data"]
