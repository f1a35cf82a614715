"""Read CloudFormation/SAM templates (short intrinsic tags included) so local tooling uses the
definitions that will be deployed instead of a second copy of them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _CfnLoader(yaml.SafeLoader):
    pass


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_CfnLoader)
    return data


def resources_of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template.get("Resources", {}).items() if v.get("Type") == type_}


def create_table_args(resource: dict[str, Any], table_name: str) -> dict[str, Any]:
    """CreateTable parameters from an AWS::DynamoDB::Table resource (the parts DynamoDB itself uses)."""
    props = resource["Properties"]
    args: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if gsis := props.get("GlobalSecondaryIndexes"):
        args["GlobalSecondaryIndexes"] = [
            {k: v for k, v in g.items() if k in ("IndexName", "KeySchema", "Projection")} for g in gsis
        ]
    return args


def ttl_attribute(resource: dict[str, Any]) -> str | None:
    spec = resource["Properties"].get("TimeToLiveSpecification") or {}
    return spec.get("AttributeName") if spec.get("Enabled") else None


# ---- intrinsic functions, resolved with local values ------------------------------------------------
PSEUDO_PARAMETERS = ("AWS::Partition", "AWS::AccountId", "AWS::Region", "AWS::StackName", "AWS::URLSuffix")


class UnresolvedReference(KeyError):
    """A Ref / GetAtt / ${...} the resolver was given no value for."""


def resolve(value: Any, refs: dict[str, Any], attrs: dict[str, Any], conditions: dict[str, bool] | None = None) -> Any:
    """``value`` with Ref, Fn::Sub, Fn::GetAtt, Fn::Join, Fn::If, Fn::Select and Fn::Equals replaced.

    ``refs``: what ``Ref X`` gives (parameters, pseudo parameters such as ``AWS::Region``, resources);
    ``attrs``: what ``GetAtt X.Attr`` gives, keyed "X.Attr"; ``conditions``: the template's conditions.
    A reference with no value raises ``UnresolvedReference`` (never a silent placeholder)."""

    def ref(name: str) -> Any:
        if name not in refs:
            raise UnresolvedReference(f"Ref {name}")
        return refs[name]

    def getatt(name: str) -> Any:
        if name not in attrs:
            raise UnresolvedReference(f"GetAtt {name}")
        return attrs[name]

    def sub(text: str, variables: dict[str, Any]) -> str:
        def one(match: Any) -> str:
            token = match[1]
            if token.startswith("!"):
                return "${" + token[1:] + "}"
            if token in variables:
                return str(variables[token])
            return str(getatt(token) if "." in token else ref(token))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node if not _is_no_value(n)]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return ref(arg)
            if key == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return getatt(".".join(map(str, parts)))
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    return sub(arg[0], {k: walk(v) for k, v in arg[1].items()})
                return sub(arg, {})
            if key == "Fn::Join":
                return str(arg[0]).join(str(walk(v)) for v in walk(arg[1]))
            if key == "Fn::Select":
                return walk(arg[1])[int(walk(arg[0]))]
            if key == "Fn::Equals":
                return walk(arg[0]) == walk(arg[1])
            if key == "Fn::Not":
                return not walk(arg[0])
            if key == "Fn::And":
                return all(walk(a) for a in arg)
            if key == "Fn::Or":
                return any(walk(a) for a in arg)
            if key == "Condition":
                return (conditions or {})[arg]
            if key == "Fn::If":
                return walk(arg[1] if (conditions or {})[arg[0]] else arg[2])
        return {k: walk(v) for k, v in node.items() if not _is_no_value(v)}

    return walk(value)


def _is_no_value(node: Any) -> bool:
    return isinstance(node, dict) and node == {"Ref": "AWS::NoValue"}


def evaluate_conditions(template: dict[str, Any], refs: dict[str, Any]) -> dict[str, bool]:
    """The template's Conditions with these parameter values (conditions may use earlier conditions)."""
    out: dict[str, bool] = {}
    pending = dict(template.get("Conditions") or {})
    while pending:
        progressed = False
        for name, expr in list(pending.items()):
            try:
                out[name] = bool(resolve(expr, refs, {}, out))
            except KeyError:
                continue
            del pending[name]
            progressed = True
        if not progressed:
            raise UnresolvedReference(f"conditions {sorted(pending)}")
    return out


def parameter_defaults(template: dict[str, Any]) -> dict[str, Any]:
    return {k: p["Default"] for k, p in (template.get("Parameters") or {}).items() if "Default" in p}
