"""Bounded parsing of untrusted YAML and JSON (configs, checkpoint metadata, datalists).

Safe loading alone stops code execution but not unbounded work: a YAML "billion laughs"
(anchors whose aliases nest aliases) is a few hundred bytes that expand to billions of
nodes as soon as anything walks the result, and a document nested thousands deep is a
``RecursionError`` in the parser. Here the YAML node graph is checked before it is
constructed: at most :data:`MAX_DEPTH` levels and :data:`MAX_NODES` nodes *after* alias
expansion (counted on the graph with memoisation, so the check itself is linear). JSON
has no aliases; its nesting is bounded the same way. Each violation is one line.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, FlemmeError

#: nesting levels any flemme document needs are < 10; 64 leaves room and stays far from recursion limits.
MAX_DEPTH = 64
#: nodes after alias expansion (a large config has a few hundred).
MAX_NODES = 100_000


def _yaml_loader():
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader whose composer refuses documents nested deeper than MAX_DEPTH."""

        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark
                    raise _TooDeep(f"nested more than {MAX_DEPTH} levels deep (at line {mark.line + 1})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


class _TooDeep(Exception):
    pass


def _expanded_size(root: Any) -> int:
    """Nodes the document has once every alias is expanded (memoised: linear in the graph);
    a recursive alias (a node containing itself) counts as unbounded."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_NODES:
                return sizes[key]
            continue
        if key in sizes:
            continue
        if key in active:
            return MAX_NODES + 1
        active.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in active:
                return MAX_NODES + 1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def load_yaml_text(text: str, where: str, error: type[FlemmeError] = ConfigError) -> Any:
    """Safe-load YAML ``text`` with bounded depth and alias expansion; ``where`` names it in errors."""

    loader = _yaml_loader()(text)
    try:
        try:
            node = loader.get_single_node()
        except _TooDeep as exc:
            raise error(f"{where} is {exc}; flemme documents need far fewer levels") from None
        except RecursionError:
            raise error(f"{where} is nested too deeply to read (limit {MAX_DEPTH} levels)") from None
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_NODES:
            raise error(f"{where} expands to more than {MAX_NODES:,} values through its YAML anchors/aliases "
                        "(an alias bomb?); write the values out, or use fewer aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_depth(value: Any, where: str, error: type[FlemmeError] = ConfigError, limit: int = MAX_DEPTH) -> None:
    """Refuse parsed data nested deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise error(f"{where} is nested more than {limit} levels deep; flemme documents need far fewer levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def load_json_text(text: str | bytes, where: str, error: type[FlemmeError] = ConfigError) -> Any:
    """``json.loads`` with bounded nesting; malformed or too deep JSON is one line naming ``where``."""
    import json

    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where} is nested too deeply to read (limit {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise error(f"{where} is not valid JSON ({exc})") from None
    check_depth(value, where, error)
    return value
