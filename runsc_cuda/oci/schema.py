"""The part of an OCI config.json that runsc-cuda reads and writes, as a JSON schema.

``check`` is a hand-written test of the same rules that costs microseconds;
jsonschema (~140 ms to import) runs only when ``check`` finds a problem, to
name it precisely.  A property test keeps the two in agreement.
"""

from __future__ import annotations

from typing import Any

from runsc_cuda.errors import ShimError

HOOK_KINDS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

_STRINGS = {"type": ["array", "null"], "items": {"type": "string"}}
_HOOKS = {
    "type": ["array", "null"],
    "items": {
        "type": "object",
        "required": ["path"],
        "properties": {"path": {"type": "string"}, "args": _STRINGS, "env": _STRINGS},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "mounts": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["destination"],
                "properties": {
                    "destination": {"type": "string"},
                    "type": {"type": "string"},
                    "source": {"type": "string"},
                    "options": _STRINGS,
                },
            },
        },
        "process": {
            "type": ["object", "null"],
            "properties": {"env": _STRINGS},
        },
        "linux": {
            "type": ["object", "null"],
            "properties": {
                "devices": {
                    "type": ["array", "null"],
                    "items": {
                        "type": "object",
                        "required": ["path"],
                        "properties": {"path": {"type": "string"}},
                    },
                }
            },
        },
        "hooks": {
            "type": ["object", "null"],
            "properties": {kind: _HOOKS for kind in HOOK_KINDS},
        },
        "annotations": {
            "type": ["object", "null"],
            "additionalProperties": {"type": "string"},
        },
    },
}


# --- the fast check ------------------------------------------------------------


def _strings(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(s, str) for s in value))


def _objects_with(value: Any, required: str, optional_str: tuple[str, ...], optional_lists: tuple[str, ...]) -> bool:
    if value is None:
        return True
    if not isinstance(value, list):
        return False
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get(required), str):
            return False
        for key in optional_str:
            if key in item and not isinstance(item[key], str):
                return False
        for key in optional_lists:
            if key in item and not _strings(item[key]):
                return False
    return True


def check(doc: Any) -> bool:
    """True when ``doc`` satisfies ``SCHEMA``."""
    if not isinstance(doc, dict):
        return False
    if "mounts" in doc and not _objects_with(doc["mounts"], "destination", ("type", "source"), ("options",)):
        return False
    process = doc.get("process")
    if process is not None and (not isinstance(process, dict) or ("env" in process and not _strings(process["env"]))):
        return False
    linux = doc.get("linux")
    if linux is not None:
        if not isinstance(linux, dict):
            return False
        if "devices" in linux and not _objects_with(linux["devices"], "path", (), ()):
            return False
    hooks = doc.get("hooks")
    if hooks is not None:
        if not isinstance(hooks, dict):
            return False
        for kind in HOOK_KINDS:
            if kind in hooks and not _objects_with(hooks[kind], "path", (), ("args", "env")):
                return False
    annotations = doc.get("annotations")
    return annotations is None or (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    )


# --- precise messages ----------------------------------------------------------

_ARTICLES = {
    "string": "a string",
    "array": "an array",
    "object": "an object",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").replace("-", "").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]" if out else repr(part)
    return out


def _describe(error: Any) -> str:
    where = _path(list(error.absolute_path))
    if error.validator == "type":
        wanted = error.validator_value
        kinds = [k for k in (wanted if isinstance(wanted, list) else [wanted]) if k != "null"]
        text = "expected " + " or ".join(_ARTICLES.get(k, k) for k in kinds)
    elif error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        text = f"missing required field {missing[0]!r}" if missing else error.message
    else:  # pragma: no cover - the schema uses only type and required
        text = error.message
    return f"{where}: {text}" if where else text


def problems(doc: Any) -> list[str]:
    """Every schema violation in ``doc``, in document order, as ``path: problem``."""
    from jsonschema import Draft202012Validator

    errors = sorted(
        Draft202012Validator(SCHEMA).iter_errors(doc),
        key=lambda e: [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in e.absolute_path],
    )
    return [_describe(e) for e in errors]


def validate(doc: Any, name: str = "config.json") -> None:
    """Raise ShimError naming the first problem, if any."""
    if check(doc):
        return
    found = problems(doc)
    if found:
        raise ShimError(f"{name}: {found[0]}")
    raise ShimError(f"{name}: unexpected structure")  # check and schema disagree: a bug
