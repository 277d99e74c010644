"""The API server's static rules for a CustomResourceDefinition's schemas, as a test double.

No API server or envtest can run in the tests, so this module re-states the rules the API server
applies when a CRD is created, from ``k8s.io/apiextensions-apiserver``:

``pkg/apis/apiextensions/validation/validation.go`` — ``ValidateCustomResourceDefinitionOpenAPISchema``
and the v1 ``specStandardValidator``:
  * ``additionalProperties`` and ``properties`` are mutually exclusive (``additionalProperties: true``
    beside ``properties`` is the one combination allowed);
  * ``uniqueItems: true`` is forbidden;
  * ``$ref``, ``$schema``, ``id``, ``definitions``, ``dependencies``, ``additionalItems``,
    ``patternProperties`` are forbidden; ``type: null`` is forbidden;
  * ``items`` must be one schema, not an array of schemas;
  * ``x-kubernetes-preserve-unknown-fields`` must be true or absent;
  * ``x-kubernetes-list-type`` only on arrays, one of atomic/set/map; ``map`` needs
    ``x-kubernetes-list-map-keys`` naming distinct scalar properties of an object ``items``, and those
    keys only with ``map``; ``x-kubernetes-map-type`` only on objects, atomic/granular;
  * ``x-kubernetes-validations``: a non-empty ``rule``; a message without line breaks; a multi-line
    rule needs a message; ``reason`` one of the supported values.

``pkg/apiserver/schema/validation.go`` — ``ValidateStructural`` (structural schemas):
  * every specified node has a ``type`` (unless ``x-kubernetes-int-or-string`` or
    ``x-kubernetes-preserve-unknown-fields``); arrays have ``items``;
  * value validations (``allOf``/``anyOf``/``oneOf``/``not``) specify no ``type``, ``default``,
    ``description``, ``nullable`` or ``x-kubernetes-*`` extension, and every property they name is
    also specified in the structural part;
  * at the root, ``metadata`` restricts only ``name`` and ``generateName``; ``apiVersion`` and ``kind``
    are strings;
  * ``x-kubernetes-int-or-string`` excludes ``x-kubernetes-preserve-unknown-fields``.

And from the CRD's spec: exactly one storage version, printer columns of a known type with a
``jsonPath`` starting at ``.``.

Not checked: CEL rules are not compiled and their cost is not estimated (the API server rejects a
rule whose estimated cost exceeds its limits — the models bound every list and map a rule iterates
with ``maxItems``/``maxProperties``/``maxLength`` for that reason; ``tests/test_crds.py`` evaluates the
rules with cel-python); defaults are not validated against their schema; ``metadata`` of embedded
resources; conversion webhooks.
"""

from __future__ import annotations

from typing import Any

_FORBIDDEN = ("$ref", "$schema", "id", "definitions", "dependencies", "additionalItems", "patternProperties")
_VALUE_VALIDATIONS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_VALUE_VALIDATIONS = ("type", "default", "description", "nullable", "x-kubernetes-preserve-unknown-fields",
                             "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
                             "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
                             "x-kubernetes-validations")
_REASONS = ("FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate")
_COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")


def check_crd(crd: dict) -> list[str]:
    """Every violation of the API server's CRD schema rules in ``crd`` (empty when it would be accepted)."""
    errors: list[str] = []
    versions = crd.get("spec", {}).get("versions", [])
    if sum(1 for v in versions if v.get("storage")) != 1:
        errors.append("spec.versions: exactly one version must be the storage version")
    for i, version in enumerate(versions):
        base = f"spec.versions[{i}]"
        for j, col in enumerate(version.get("additionalPrinterColumns") or []):
            if col.get("type") not in _COLUMN_TYPES:
                errors.append(f"{base}.additionalPrinterColumns[{j}].type: must be one of {_COLUMN_TYPES}")
            if not str(col.get("jsonPath", "")).startswith("."):
                errors.append(f"{base}.additionalPrinterColumns[{j}].jsonPath: must start with '.'")
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            errors.append(f"{base}.schema.openAPIV3Schema: required")
            continue
        path = f"{base}.schema.openAPIV3Schema"
        errors += _root(schema, path)
        errors += _node(schema, path, nested=False)
    return errors


def _root(schema: dict, path: str) -> list[str]:
    errors = []
    props = schema.get("properties") or {}
    for key in ("apiVersion", "kind"):
        if key in props and props[key].get("type") != "string":
            errors.append(f"{path}.properties[{key}].type: must be string")
    meta = props.get("metadata")
    if meta is not None:
        rest = {k: v for k, v in meta.items() if k not in ("type", "properties")}
        extra = set(meta.get("properties") or {}) - {"name", "generateName"}
        if rest or extra or meta.get("type") not in (None, "object"):
            errors.append(f"{path}.properties[metadata]: must not specify anything other than name and "
                          "generateName, but metadata is implicitly specified")
    return errors


def _node(node: Any, path: str, nested: bool) -> list[str]:
    if not isinstance(node, dict):
        return [f"{path}: must be a schema object"]
    errors: list[str] = []
    errors += [f"{path}.{key}: Forbidden" for key in _FORBIDDEN if key in node]
    if node.get("uniqueItems") is True:
        errors.append(f"{path}.uniqueItems: cannot be set to true since the runtime complexity becomes quadratic")
    if node.get("type") == "null":
        errors.append(f"{path}.type: null is not supported")
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        errors.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be true or undefined")
    if node.get("x-kubernetes-int-or-string") and node.get("x-kubernetes-preserve-unknown-fields"):
        errors.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be false if x-kubernetes-int-or-string")
    extra = node.get("additionalProperties")
    if "additionalProperties" in node and node.get("properties") and extra is not True:
        errors.append(f"{path}.additionalProperties: additionalProperties and properties are mutual exclusive")
    if nested:
        errors += [f"{path}.{key}: must not be specified in a nested context"
                   for key in _NOT_IN_VALUE_VALIDATIONS if key in node]
    else:
        errors += _structural(node, path)
    errors += _lists(node, path) + _validations(node, path)
    for key, sub in (node.get("properties") or {}).items():
        errors += _node(sub, f"{path}.properties[{key}]", nested)
    if isinstance(extra, dict):
        errors += _node(extra, f"{path}.additionalProperties", nested)
    items = node.get("items")
    if isinstance(items, list):
        errors.append(f"{path}.items: must be a schema object and not an array")
    elif items is not None:
        errors += _node(items, f"{path}.items", nested)
    for key in _VALUE_VALIDATIONS:
        subs = node.get(key)
        if node.get("x-kubernetes-int-or-string") and _int_or_string_pattern(node, key):
            continue  # the one place a value validation may carry types
        for i, sub in enumerate(subs if isinstance(subs, list) else [subs] if subs else []):
            sub_path = f"{path}.{key}[{i}]" if isinstance(subs, list) else f"{path}.{key}"
            errors += _node(sub, sub_path, nested=True)
            if not nested:
                errors += _specified(node, sub, sub_path, path)
    return errors


_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _int_or_string_pattern(node: dict, key: str) -> bool:
    """``anyOf: [{type: integer}, {type: string}]`` (or as ``allOf[0].anyOf``) beside
    ``x-kubernetes-int-or-string`` (isIntOrStringAnyOfPattern / isIntOrStringAllOfPattern)."""
    if key == "anyOf":
        return node.get("anyOf") == _INT_OR_STRING
    if key == "allOf":
        first = (node.get("allOf") or [{}])[0]
        return isinstance(first, dict) and first.get("anyOf") == _INT_OR_STRING
    return False


def _structural(node: dict, path: str) -> list[str]:
    errors = []
    typed = node.get("type") or node.get("x-kubernetes-int-or-string") or \
        node.get("x-kubernetes-preserve-unknown-fields")
    if not typed:
        errors.append(f"{path}.type: must not be empty for specified object fields")
    if node.get("type") == "array" and "items" not in node:
        errors.append(f"{path}.items: must be specified")
    if node.get("properties") and node.get("type") not in (None, "object"):
        errors.append(f"{path}.type: must be object when properties are specified")
    return errors


def _specified(node: dict, validation: Any, where: str, path: str) -> list[str]:
    """Properties named in a value validation must be specified in the structural schema too."""
    if not isinstance(validation, dict):
        return []
    errors = []
    for key, sub in (validation.get("properties") or {}).items():
        spec = (node.get("properties") or {}).get(key)
        if spec is None and not node.get("x-kubernetes-preserve-unknown-fields") and \
                not isinstance(node.get("additionalProperties"), dict):
            errors.append(f"{path}.properties[{key}]: Required value: because it is defined in {where}.properties[{key}]")
        elif spec is not None:
            errors += _specified(spec, sub, f"{where}.properties[{key}]", f"{path}.properties[{key}]")
    if isinstance(validation.get("items"), dict) and isinstance(node.get("items"), dict):
        errors += _specified(node["items"], validation["items"], f"{where}.items", f"{path}.items")
    for key in _VALUE_VALIDATIONS:
        subs = validation.get(key)
        for sub in subs if isinstance(subs, list) else [subs] if subs else []:
            errors += _specified(node, sub, where, path)
    return errors


def _lists(node: dict, path: str) -> list[str]:
    errors = []
    list_type = node.get("x-kubernetes-list-type")
    keys = node.get("x-kubernetes-list-map-keys") or []
    if list_type is not None and node.get("type") != "array":
        errors.append(f"{path}.type: must be array if x-kubernetes-list-type is specified")
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        errors.append(f"{path}.x-kubernetes-list-type: must be atomic, set or map")
    if keys and list_type != "map":
        errors.append(f"{path}.x-kubernetes-list-type: must be map if x-kubernetes-list-map-keys is non-empty")
    if list_type == "map":
        items = node.get("items")
        if not keys:
            errors.append(f"{path}.x-kubernetes-list-map-keys: must not be empty if x-kubernetes-list-type is map")
        if not isinstance(items, dict) or items.get("type") != "object":
            errors.append(f"{path}.items.type: must be object if parent array's x-kubernetes-list-type is map")
        else:
            if len(set(keys)) != len(keys):
                errors.append(f"{path}.x-kubernetes-list-map-keys: must not contain duplicate entries")
            for key in keys:
                prop = (items.get("properties") or {}).get(key)
                if prop is None:
                    errors.append(f"{path}.x-kubernetes-list-map-keys: entries must all be names of item properties")
                elif prop.get("type") in ("array", "object"):
                    errors.append(f"{path}.items.properties[{key}].type: must be a scalar type")
                elif key not in (items.get("required") or []) and "default" not in prop:
                    # validateMapListKeysMapSet: keys must be present on every item
                    errors.append(f"{path}.items.properties[{key}]: list map keys must be required or have a default")
    map_type = node.get("x-kubernetes-map-type")
    if map_type is not None and node.get("type") != "object":
        errors.append(f"{path}.type: must be object if x-kubernetes-map-type is specified")
    if map_type is not None and map_type not in ("atomic", "granular"):
        errors.append(f"{path}.x-kubernetes-map-type: must be atomic or granular")
    return errors


def _validations(node: dict, path: str) -> list[str]:
    errors = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        where = f"{path}.x-kubernetes-validations[{i}]"
        text, message = str(rule.get("rule", "")).strip(), rule.get("message")
        if not text:
            errors.append(f"{where}.rule: rule is not specified")
        if message is not None and (not str(message).strip() or "\n" in str(message).strip()):
            errors.append(f"{where}.message: must be non-empty and without line breaks")
        if "\n" in text and not str(message or "").strip():
            errors.append(f"{where}.message: must be specified if rule contains line breaks")
        if rule.get("reason") is not None and rule["reason"] not in _REASONS:
            errors.append(f"{where}.reason: must be one of {_REASONS}")
    return errors
