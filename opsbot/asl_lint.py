"""A template for cfn-lint to check the state machine definitions (statemachines/*.asl.yaml) themselves.

cfn-lint checks a state machine's definition (E3601: the ASL schema, Distributed Map fields included)
only when it is an inline ``Definition`` of an ``AWS::StepFunctions::StateMachine``; SAM's
``DefinitionUri`` file and its ``${...}`` substitutions it leaves alone. ``make cfn`` writes this
template (every SAM state machine, inlined, with example values substituted) and lints it.

    python -m opsbot.asl_lint template.yaml > build/asl-lint.json
"""

from __future__ import annotations

import json
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from opsbot.cfn import load_template, parameter_defaults

EXAMPLE_ACCOUNT, EXAMPLE_REGION = "123456789012", "us-east-1"


def _example(name: str, value: Any, defaults: dict[str, Any]) -> str:
    """An example value of one DefinitionSubstitution, in the shape its target takes."""
    if isinstance(value, dict) and "Ref" in value and value["Ref"] == "AWS::Partition":
        return "aws"
    if isinstance(value, dict) and "Ref" in value and value["Ref"] in defaults:
        return str(defaults[value["Ref"]])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return f"arn:aws:lambda:{EXAMPLE_REGION}:{EXAMPLE_ACCOUNT}:function:{value['Fn::GetAtt'][0]}"
    if isinstance(value, dict) and "Ref" in value:  # a resource's name (a bucket)
        return str(value["Ref"]).lower()
    return str(value)


def _substitute(values: dict[str, str], match: re.Match[str]) -> str:
    return values[match[1]]


def lint_template(template_path: Path) -> dict[str, Any]:
    template = load_template(template_path)
    defaults = parameter_defaults(template)
    resources: dict[str, Any] = {}
    for lid, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::StateMachine":
            continue
        props = resource["Properties"]
        text = (template_path.parent / props["DefinitionUri"]).read_text(encoding="utf-8")
        values = {k: _example(k, v, defaults) for k, v in (props.get("DefinitionSubstitutions") or {}).items()}
        missing = sorted(set(re.findall(r"\$\{(\w+)\}", text)) - set(values))
        if missing:
            raise SystemExit(f"{props['DefinitionUri']}: no DefinitionSubstitutions for {missing}")
        definition = yaml.safe_load(re.sub(r"\$\{(\w+)\}", partial(_substitute, values), text))
        resources[lid] = {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "RoleArn": f"arn:aws:iam::{EXAMPLE_ACCOUNT}:role/{lid}",
                "StateMachineType": props.get("Type", "STANDARD"),
                "Definition": definition,
            },
        }
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}


if __name__ == "__main__":
    json.dump(lint_template(Path(sys.argv[1] if len(sys.argv) > 1 else "template.yaml")), sys.stdout, indent=1)
