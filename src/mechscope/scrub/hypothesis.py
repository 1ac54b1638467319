"""Hypotheses as data: a graph of named nodes, each claiming what some sites compute and what they read.

A node names sites of the model, a feature of the input (what the sites compute; see
:mod:`mechscope.scrub.features`) and its children, the upstream nodes it claims to read. The root is the
model's output (it names no sites). Every path from the input to the output that the hypothesis does not
name is claimed irrelevant. A node may instead carry a *program*: a Python function that replaces its
site outright (program replacement; :mod:`mechscope.scrub.programs`).

In YAML (strict: an unknown key, or a value of the wrong type, is refused naming its path in the document,
e.g. ``hypothesis.nodes.output.children: expected a list of strings, got a string``)::

    # parens-correct: the output reads the string only through the count and horizon tests
    model: zoo:parens            # optional: the model the hypothesis is about
    task: repeated_tokens        # optional: the data (default: the zoo model's own task)
    task_args: {seg: 12}         # optional: arguments of the task builder
    seeds: 8                     # optional: resampling seeds (confidence interval over them)
    examples: 2000               # optional: evaluation examples (the references)
    pool: 0                      # optional: a separate sampling pool of this many inputs (0: the references)
    root: output
    nodes:
      output: {feature: identity, children: [tests]}
      tests:  {sites: ["blocks.2:input"], feature: parens.tests}

Node keys: ``sites`` (list of site strings, or one; none for the root), ``feature`` (a name, ``module:function``,
``identity``, or ``none``/null), ``per_position`` (for imported per-position features), ``children`` (node
names), ``program`` (``module:function`` or a name in :data:`~mechscope.scrub.programs.PROGRAMS`),
``program_args`` (a mapping passed to the program's factory), ``rest`` (where everything else feeding a
node with children comes from: ``none``, the default, an unconditionally resampled input as in the
write-up; ``identity``, the node's own x'; or any per-example feature, an input agreeing with x' on it), ``channels`` (``[start, stop)`` of the
sites' last axis to patch, e.g. one head's slice of an ``o_proj`` input; the rest is left as it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechscope.scrub.errors import HypothesisError
from mechscope.scrub.features import Feature, resolve_feature

# The type of every key's value; null is the default (for `feature`, null is `none`). Lists name their items' type.
TOP_SCHEMA = {
    "model": "string",
    "task": "string",
    "task_args": "mapping",
    "seeds": "integer",
    "examples": "integer",
    "pool": "integer",
    "root": "string",
    "nodes": "mapping",
    "description": "string",
    "batch_size": "integer",
}
NODE_SCHEMA = {
    "sites": "list of strings",
    "feature": "string",
    "per_position": "boolean",
    "children": "list of strings",
    "program": "string",
    "program_args": "mapping",
    "channels": "list of integers",
    "description": "string",
    "rest": "string",
}
NODE_KEYS, TOP_KEYS = set(NODE_SCHEMA), set(TOP_SCHEMA)
_IS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "mapping": lambda v: isinstance(v, dict),
}
_A = {"string": "a string", "integer": "an integer", "boolean": "true or false", "mapping": "a mapping"}


@dataclass(frozen=True)
class Node:
    """One claim: ``sites`` compute ``feature`` of the input, reading only ``children``."""

    name: str
    """Unique within the hypothesis; errors name it."""
    sites: tuple[str, ...] = ()
    """Site strings (see :mod:`mechscope.sites`); empty for the root, which is the model's output."""
    feature: Feature = field(default_factory=lambda: resolve_feature("identity", None, "?"))
    """What the sites compute (``identity``: everything; ``none``: nothing that matters)."""
    children: tuple[Node, ...] = ()
    """The upstream nodes this node reads (each patched into the forward pass that computes this node)."""
    program: tuple[Any, dict] | None = None
    """(factory, args) of a program replacing the node's single site (see :mod:`mechscope.scrub.programs`);
    None for a claim."""
    channels: tuple[int, int] | None = None
    """Patch only ``[start, stop)`` of the last axis of the sites (None: all of it)."""
    description: str = ""
    """What the node claims, in words (shown in reports)."""
    rest: Feature = field(default_factory=lambda: resolve_feature("none", None, "?"))
    """Where the inputs of this node's forward pass that no child covers come from, relative to the node's
    own draw x': ``none`` (unconditionally resampled, the write-up's default), ``identity`` (x' itself: the
    node claims nothing about its other inputs) or a per-example feature (an input agreeing with x' on it).
    Only nodes with children run a forward pass of their own; a leaf's value is its activation on x'."""


@dataclass(frozen=True)
class Hypothesis:
    """A root node (the model output) and evaluation defaults."""

    root: Node
    """The model's output; its feature is usually ``identity``."""
    model: str | None = None
    """The model the hypothesis is about (``zoo:NAME``, ``smollm2`` or a path), if the file says."""
    task: str | None = None
    """The data it is evaluated on (a name in :data:`mechscope.scrub.tasks.TASKS`); None: the zoo model's own."""
    seeds: int = 8
    """Resampling seeds; the scrubbed loss gets a confidence interval over them."""
    examples: int = 2000
    """Evaluation examples (the references)."""
    pool: int = 0
    """Size of a separate pool equivalent inputs are drawn from, shared by every node (0: the references are
    the pool, as in the write-up's dataset)."""
    task_args: tuple[tuple[str, Any], ...] = ()
    """Keyword arguments of the task builder (``task_args:`` in YAML), as sorted pairs."""
    batch_size: int = 4096
    """Examples per forward pass."""
    description: str = ""
    """What the hypothesis claims (the first comment line of a YAML file)."""

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise HypothesisError(f"seeds must be ≥ 2 for a confidence interval, got {self.seeds}")
        if self.examples < 2 or self.batch_size < 1 or self.pool < 0 or self.pool == 1:
            raise HypothesisError(
                f"examples must be ≥ 2, pool 0 or ≥ 2 and batch_size ≥ 1, got {self.examples}, {self.pool}, "
                f"{self.batch_size}"
            )

    def nodes(self) -> list[Node]:
        """Every node, parents before children (a node reached by two paths appears once per path)."""
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(n.children))
        return out


def _check_keys(got: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise HypothesisError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )


def _yaml_type(value: Any) -> str:
    """``value``'s YAML type in words, with the value itself when it is a scalar."""
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    kind = kinds.get(type(value), type(value).__name__)
    return f"{kind} ({value!r})" if isinstance(value, (bool, int, float, str)) else kind


def _check_types(got: dict, schema: dict[str, str], where: str) -> None:
    """Refuse a value of the wrong type, naming its path in the document (``hypothesis.nodes.n.children``)."""
    for key, want in schema.items():
        value = got.get(key)
        if value is None or (key == "sites" and isinstance(value, str)):  # null: the default; one site may stand bare
            continue
        if want.startswith("list of "):
            item = want.removeprefix("list of ").removesuffix("s")
            if not isinstance(value, list):
                hint = f"; write it as a list: [{value}]" if item == "string" and _IS[item](value) else ""
                raise HypothesisError(f"{where}.{key}: expected a list of {item}s, got {_yaml_type(value)}{hint}")
            for i, x in enumerate(value):
                if not _IS[item](x):
                    raise HypothesisError(f"{where}.{key}[{i}]: expected {_A[item]}, got {_yaml_type(x)}")
        elif not _IS[want](value):
            raise HypothesisError(f"{where}.{key}: expected {_A[want]}, got {_yaml_type(value)}")


def _check_document(data: dict[str, Any]) -> None:
    """Keys and types of the whole document, every node included (reachable from the root or not)."""
    _check_keys(data, TOP_KEYS, "hypothesis")
    _check_types(data, TOP_SCHEMA, "hypothesis")
    for key in data.get("task_args") or {}:
        if not isinstance(key, str):
            raise HypothesisError(f"hypothesis.task_args: argument names must be strings, got {_yaml_type(key)}")
    for name, spec in (data.get("nodes") or {}).items():
        if not isinstance(name, str):
            raise HypothesisError(f"hypothesis.nodes: node names must be strings, got {_yaml_type(name)}; quote it")
        if spec is not None and not isinstance(spec, dict):
            raise HypothesisError(
                f"node {name!r}: expected a mapping of {', '.join(sorted(NODE_KEYS))}, got {_yaml_type(spec)}"
            )
        _check_keys(spec or {}, NODE_KEYS, f"node {name!r}")
        _check_types(spec or {}, NODE_SCHEMA, f"hypothesis.nodes.{name}")


def _node_from(name: str, specs: dict[str, Any], path: tuple[str, ...], built: dict[str, Node]) -> Node:
    if name in path:
        raise HypothesisError(
            f"node {name!r}: cycle {' → '.join(path[path.index(name) :] + (name,))}; a hypothesis is a tree"
        )
    if name not in specs:
        raise HypothesisError(
            f"node {path[-1]!r} names child {name!r}, which is not defined under nodes: ({', '.join(specs)})"
        )
    if name in built:
        return built[name]
    spec = specs[name] or {}
    sites = spec.get("sites") or []
    if isinstance(sites, str):
        sites = [sites]
    children = tuple(_node_from(c, specs, path + (name,), built) for c in (spec.get("children") or []))
    program = None
    if spec.get("program") is not None:
        from mechscope.scrub.programs import resolve_program

        if len(sites) != 1 or children:
            raise HypothesisError(f"node {name!r}: a program replaces exactly one site and has no children")
        program = resolve_program(spec["program"], spec.get("program_args") or {}, name)
    channels = spec.get("channels")
    if channels is not None and (len(channels) != 2 or not 0 <= channels[0] < channels[1]):
        raise HypothesisError(f"node {name!r}: channels must be [start, stop) with 0 ≤ start < stop, got {channels}")
    feature_spec = spec.get("feature", "identity")
    node = Node(
        name,
        tuple(sites),
        resolve_feature(feature_spec, spec.get("per_position"), name),
        children,
        program,
        None if channels is None else (int(channels[0]), int(channels[1])),
        spec.get("description") or "",
        resolve_feature(spec.get("rest", "none"), None, name),
    )
    if node.feature.per_position and children:
        raise HypothesisError(
            f"node {name!r}: a per-position feature ({node.feature.name}) is allowed on leaf nodes only"
        )
    if "rest" in spec and not children:
        raise HypothesisError(
            f"node {name!r}: `rest` applies to nodes with children (a leaf's value is its activation on x' itself); drop it"
        )
    if node.rest.per_position:
        raise HypothesisError(
            f"node {name!r}: rest {node.rest.name!r} is per-position; an inner node runs one input per example"
        )
    built[name] = node
    return node


def hypothesis_from_dict(data: dict[str, Any], description: str = "") -> Hypothesis:
    """Build a :class:`Hypothesis` from the YAML structure of the module docstring (strict keys)."""
    if not isinstance(data, dict):
        raise HypothesisError(f"a hypothesis file holds a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    _check_document(data)
    specs = data.get("nodes") or {}
    root = data.get("root")
    if not isinstance(specs, dict) or not specs or root is None:
        raise HypothesisError("a hypothesis needs `root: NAME` and `nodes:` mapping names to nodes")
    if root not in specs:
        raise HypothesisError(f"root {root!r} is not defined under nodes: ({', '.join(specs)})")
    root_node = _node_from(root, specs, (), {})
    if root_node.sites:
        raise HypothesisError(f"node {root!r}: the root is the model's output and names no sites")
    kw = {k: data[k] for k in ("seeds", "examples", "pool", "batch_size") if data.get(k) is not None}
    kw["task_args"] = tuple(sorted((data.get("task_args") or {}).items()))
    return Hypothesis(
        root_node,
        model=data.get("model"),
        task=data.get("task"),
        description=data.get("description") or description,
        **kw,
    )


def load_hypothesis(path: str | Path) -> Hypothesis:
    """Read a YAML hypothesis; its first comment line becomes the description."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise HypothesisError(f"hypothesis file {path} does not exist")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise HypothesisError(
            f"hypothesis file {path} is {kind}; pass a YAML file (e.g. examples/scrub/parens-correct.yaml)"
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise HypothesisError(f"hypothesis file {path} cannot be read ({e.strerror}); check its permissions") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise HypothesisError(
            f"hypothesis file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "a hypothesis is a YAML text file"
        ) from e
    if "\0" in text:
        raise HypothesisError(
            f"hypothesis file {path} is a binary file (it holds NUL bytes); a hypothesis is a YAML text file"
        )
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise HypothesisError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e
    return hypothesis_from_dict(data, first.lstrip("# ").strip() if first.startswith("#") else "")
