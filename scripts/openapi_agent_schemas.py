"""Refresh the agent config schemas in docs/openapi.yaml from the pydantic model.

    python scripts/openapi_agent_schemas.py         # rewrites the generated block
    python scripts/openapi_agent_schemas.py --check # exit 1 if it is stale

The block between the ``# BEGIN generated`` / ``# END generated`` markers is
``AgentConfig.model_json_schema()`` (strict: unknown fields are refused), its nested
models, and ``AgentConfigFields`` (the same without ``additionalProperties: false``, the
part of an agent object that is its configuration).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.agent_config import AgentConfig  # noqa: E402

SPEC = ROOT / "docs" / "openapi.yaml"
BEGIN = "    # BEGIN generated from pipelines/agent_config.py (scripts/openapi_agent_schemas.py)\n"
END = "    # END generated\n"


def agent_schemas() -> dict[str, Any]:
    schema = AgentConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    fields = {k: v for k, v in schema.items() if k != "additionalProperties"}
    return {"AgentConfig": schema, "AgentConfigFields": fields, **defs}


def block() -> str:
    text = yaml.safe_dump(agent_schemas(), sort_keys=False, allow_unicode=True, width=100)
    return BEGIN + "".join(f"    {line}\n" for line in text.splitlines()) + END


def main() -> int:
    spec = SPEC.read_text()
    start, end = spec.index(BEGIN), spec.index(END) + len(END)
    fresh = spec[:start] + block() + spec[end:]
    if "--check" in sys.argv:
        if fresh != spec:
            print("docs/openapi.yaml: the agent schemas are stale; run "
                  "python scripts/openapi_agent_schemas.py", file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
