"""Parsing config YAML more strictly than `yaml.safe_load` (every config problem is an error
naming the file and the key), where PyYAML is lenient:

* a key repeated in one mapping: PyYAML keeps the last value silently, so a setting the author sees
  in the file is not the one used;
* aliases: PyYAML composes `&a [x, x]`, `&b [*a, *a]`, ... as shared nodes in microseconds, but the
  loader copies the result into a tree with one node per path (experiment/config/loading.py), so a
  few hundred bytes of nested aliases (a "billion laughs" file) would take minutes and gigabytes
  there. The expanded size is therefore counted on the composed node graph, where sharing keeps the
  count cheap, and a document beyond `MAX_NODES` is refused before anything is built from it;
* deep nesting (`MAX_DEPTH`, aliases copied out): the loader, `copy.deepcopy` and validation recurse
  once or more per level, and a RecursionError is a traceback, not an answer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import yaml

from experiment.config.schema import KeyPath, format_key_path

MAX_NODES = 100_000
"""The most nodes (mapping keys, values, list items) a document may expand to; real configs have a
few hundred, and building the loader's tree of this many takes a fraction of a second."""

MAX_DEPTH = 50
"""The most levels of nesting, aliases copied out; real configs have about 6, and copying and
validating stay far from Python's recursion limit below this."""

_MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *base`: keys that the mapping may override, not repeats


class RefusedYAML(yaml.YAMLError):
    """Well-formed YAML this project refuses; `key` is the dotted key path it concerns ('<root>' for
    the whole document) and `message` says why, with the line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def parse_yaml(text: str) -> Any:
    """`text` parsed like `yaml.safe_load`, but raising RefusedYAML for a key repeated in a mapping
    or a document beyond MAX_NODES or MAX_DEPTH once its aliases are copied out (and yaml.YAMLError
    for malformed YAML)."""
    return yaml.load(text, Loader=_StrictLoader)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that, once the document is composed and before anything is constructed, checks its
    expanded size and depth and refuses repeated keys (construction would merge `<<` keys into the
    mappings and drop the repeats)."""

    def get_single_node(self) -> yaml.Node | None:
        try:
            root = super().get_single_node()
        except RecursionError:  # PyYAML's composer recurses once per level
            raise RefusedYAML("<root>", f"nested too deeply to parse (a config may have at most {MAX_DEPTH} "
                                        f"levels)") from None
        if root is not None:
            _extent(root, 1, {}, set())
            self._refuse_repeated_keys(root)
        return root

    def _refuse_repeated_keys(self, root: yaml.Node) -> None:
        """Raises RefusedYAML naming the key path and both lines for the first key (in document
        order) given twice in one mapping. Keys compare as the values they load as (`1` and `0x1`
        repeat each other, `1` and `"1"` do not); each shared node is looked at once."""
        stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())]
        seen: set[int] = set()
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                first: dict[Any, yaml.Node] = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                        continue
                    earlier = first.setdefault(self.construct_object(key_node), key_node)
                    if earlier is not key_node:
                        raise RefusedYAML(format_key_path((*path, key_node.value)),
                                          f"key given twice in one mapping, at {_place(earlier)} "
                                          f"and {_place(key_node)}")
                children = [(value, (*path, _key_text(key))) for key, value in node.value]
            elif isinstance(node, yaml.SequenceNode):
                children = [(item, (*path, index)) for index, item in enumerate(node.value)]
            else:
                children = []
            stack.extend(reversed(children))


def _key_text(key_node: yaml.Node) -> str:
    """A mapping key as written, for key paths in messages."""
    return key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"


def _place(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _Extent(NamedTuple):
    """What a node stands for once every alias in it is copied out."""

    size: int  # nodes
    height: int  # levels of nesting, 1 for a scalar


def _extent(node: yaml.Node, depth: int, extents: dict[int, _Extent], open_nodes: set[int]) -> _Extent:
    """The extent of `node`, found `depth` levels down (1 for the root); `extents` memoises shared
    nodes (every alias of an anchor is the same node object, so a bomb costs one visit per anchor),
    `open_nodes` holds the nodes being measured, so an alias inside its own anchor is caught. Raises
    RefusedYAML past MAX_NODES or MAX_DEPTH."""
    known = extents.get(id(node))
    if id(node) in open_nodes:
        raise RefusedYAML("<root>", f"the node at {_place(node)} contains an alias of itself, so it never ends")
    if depth + (known.height if known else 1) - 1 > MAX_DEPTH:
        raise RefusedYAML("<root>", f"nested more than {MAX_DEPTH} levels deep at {_place(node)} (a config needs "
                                    f"about 6); refusing it")
    if known:
        return known
    open_nodes.add(id(node))
    size, height = 1, 1
    for child in _children(node):
        extent = _extent(child, depth + 1, extents, open_nodes)
        size, height = size + extent.size, max(height, extent.height + 1)
    open_nodes.discard(id(node))
    if size > MAX_NODES:
        raise RefusedYAML("<root>", f"the node at {_place(node)} stands for more than {MAX_NODES} nodes once its "
                                    f"aliases are copied out (a config needs a few hundred); refusing it")
    extents[id(node)] = _Extent(size, height)
    return extents[id(node)]
