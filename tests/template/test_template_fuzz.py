"""Property-based fuzzing: mutated templates give a model or a clean ValidationFailed, never a crash.

Mutations are drawn by hypothesis over real templates (kiln's examples; and, when the conformance
corpus is there, a legacy-type template and an ARM deployment sample from it): replace any value with any JSON (huge numbers, deep nesting, wrong types,
ARM-looking strings), delete a key, add a key, or change a discriminator.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from template_support import aib, example, filled

from kiln.errors import Problem, ValidationFailed
from kiln.template import dump_template, load_template_data
from kiln.template.model import ImageTemplate

Base = tuple[Any, dict[str, str]]
BASES: list[Base] = [
    (example("debian12-managed-image.json"), {}),
    (example("debian12-gallery.json"), {}),
    (example("debian12-vhd.json"), {}),
]


def corpus_bases() -> list[Base]:
    """Two corpus templates (read when the test runs: it skips, or fails under CI, without the corpus)."""
    deployment, params = filled(aib() / "templates" / "solutions__4_Using_ENV_Variables__devOpsEnvTemplate.json")
    legacy, _ = filled(aib() / "templates_nonstandard_type" /
                       "quickquickstarts__9_Setting_up_a_Trigger_with_a_Custom_Linux_Image__helloImageTemplate.json")
    return [(legacy, {}), (deployment, params)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["", "latest", "Shell", "PowerShell", "File", "WindowsRestart", "WindowsUpdate", "ManagedImage",
                     "SharedImage", "VHD", "PlatformImage", "ISO", "SharedImageVersion", "[parameters('x')]",
                     "[concat(", "[[x]", "[resourceGroup().location]", "/subscriptions/a/resourceGroups/b",
                     "westus2", "2019-05-01-preview", "5m", "a" * 64, "\u0000", "[variables('resourceid')]"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, bases: list[Base]) -> Base:
    base, params = draw(st.sampled_from(bases))
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        if not path:
            if draw(st.booleans()):
                data = draw(json_values)
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return data, params


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(BASES))
def test_mutated_templates_load_or_fail_cleanly(case: Base) -> None:
    check_mutated(case)


def test_mutated_corpus_templates_load_or_fail_cleanly() -> None:
    bases = corpus_bases()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated(bases))
    def run(case: Base) -> None:
        check_mutated(case)

    run()


def check_mutated(case: Base) -> None:
    data, params = case
    before = json.dumps(data, sort_keys=True, default=str)
    try:
        templates = load_template_data(data, file="fuzz.json", parameters=params)
    except ValidationFailed as e:
        assert e.problems
        for p in e.problems:
            assert isinstance(p, Problem) and p.message and p.file == "fuzz.json"
            assert p.path == "" or p.path.startswith((".", "["))
            json.dumps(p.to_json())
    else:
        assert templates and all(isinstance(t, ImageTemplate) for t in templates)
        for t in templates:
            assert load_template_data(dump_template(t)) == (t,)
    assert json.dumps(data, sort_keys=True, default=str) == before, "the caller's data is not modified"


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_any_json_document_fails_cleanly_or_loads(value: Any) -> None:
    try:
        load_template_data(value)
    except ValidationFailed as e:
        assert e.problems


def test_deep_nesting_is_a_clean_error() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    data = example("debian12-vhd.json")
    data["tags"] = {"deep": deep}
    try:
        load_template_data(data)
    except ValidationFailed as e:
        assert e.problems
