"""The published JSON Schema is a valid schema; ARM expressions evaluate as ARM would."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
from template_support import spec_examples

from kiln.template import dump_template, load_template
from kiln.template.arm import ArmError, Deployment, Scope, evaluate_string, evaluate_value
from kiln.template.schema import schema


def test_published_schema_is_valid_draft_2020_12() -> None:
    text = resources.files("kiln.template").joinpath("imagetemplate.schema.json").read_text()
    published = json.loads(text)
    assert published["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(published)
    assert published == schema()


def test_schema_accepts_what_kiln_dumps() -> None:
    (t,) = load_template(spec_examples() / "CreateImageTemplateLinux.json")
    jsonschema.Draft202012Validator(schema()).validate(dump_template(t))


def test_schema_covers_every_union_member_of_the_spec() -> None:
    spec = json.loads((spec_examples().parent / "imagebuilder.json").read_text())
    members = {d["x-ms-discriminator-value"] for d in spec["definitions"].values() if "x-ms-discriminator-value" in d}
    ours = set()
    for union in ("Source", "Customizer", "InVMValidator", "Distributor", "Versioning"):
        (disc,) = schema()["$defs"][union]["properties"].values()
        ours |= set(disc["enum"])
    assert members - {"SourceImage"} <= ours  # SourceImage is a trigger kind, not part of a template


@pytest.fixture
def scope() -> Scope:
    return Scope(
        {"name": "tpl", "rgId": "/subscriptions/s/resourceGroups/rg", "count": 3, "obj": {"a": {"b": ["x", "y"]}}},
        {"full": "[concat(parameters('rgId'), '/providers/Microsoft.Compute/images/', variables('short'))]",
         "short": "[toLower('IMG')]", "loop": "[variables('loop')]"},
        Deployment(subscription_id="sub-1", resource_group="group-1", location="northeurope"),
    )


@pytest.mark.parametrize(("expr", "value"), [
    ("[parameters('name')]", "tpl"),
    ("[PARAMETERS('NAME')]", "tpl"),
    ("[concat('a', 'b', parameters('count'))]", "ab3"),
    ("[variables('full')]", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/img"),
    ("[resourceGroup().location]", "northeurope"),
    ("[resourceGroup().name]", "group-1"),
    ("[subscription().subscriptionId]", "sub-1"),
    ("[resourceId('Microsoft.Compute/galleries/images', 'g', 'd')]",
     "/subscriptions/sub-1/resourceGroups/group-1/providers/Microsoft.Compute/galleries/g/images/d"),
    ("[resourceId('other-rg', 'Microsoft.Compute/images', 'i')]",
     "/subscriptions/sub-1/resourceGroups/other-rg/providers/Microsoft.Compute/images/i"),
    ("[resourceId('s2', 'rg2', 'Microsoft.ManagedIdentity/userAssignedIdentities', 'id')]",
     "/subscriptions/s2/resourceGroups/rg2/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"),
    ("[parameters('obj').a.b[1]]", "y"),
    ("[parameters('obj')['a']['b'][0]]", "x"),
    ("[format('{0}-{1}', parameters('name'), 7)]", "tpl-7"),
    ("[concat('it''s', ' ok')]", "it's ok"),
    ("[[not an expression]", "[not an expression]"),
    ("plain", "plain"),
    ("[if(equals(parameters('count'), 3), 'three', 'other')]", "three"),
])
def test_expressions(expr: str, value: object, scope: Scope) -> None:
    assert evaluate_string(expr, scope) == value


@pytest.mark.parametrize(("expr", "words"), [
    ("[parameters('nope')]", "not declared"),
    ("[variables('loop')]", "refers to itself"),
    ("[uniqueString('x')]", "not supported"),
    ("[concat('a']", "expected"),
    ("[parameters('obj').missing]", "no property"),
    ("[parameters('obj').a.b[5]]", "out of range"),
    ("[resourceId('Microsoft.Compute/galleries/images', 'only-one')]", "needs 2 name"),
    ("[concat('a') extra]", "unexpected"),
    ("[\u00e9]", "cannot parse"),
])
def test_expression_errors_are_clear(expr: str, words: str, scope: Scope) -> None:
    with pytest.raises(ArmError) as caught:
        evaluate_string(expr, scope)
    assert words in caught.value.message


def test_keys_and_nested_values_are_evaluated(scope: Scope) -> None:
    value = evaluate_value({"[parameters('name')]": ["[parameters('count')]", {"k": "[[x]"}]}, scope)
    assert value == {"tpl": [3, {"k": "[x]"}]}
