"""The one YAML loader of every file tuner reads: PyYAML's safe loader, minus YAML 1.1's traps.

PyYAML reads YAML 1.1, where a key given twice silently keeps the last value,
``yes``/``no``/``on``/``off`` are booleans, ``010`` is the octal 8 and ``1:30``
the base-60 number 90. Each of these means something other than what the file
seems to say, so each is refused with its line; ``true``/``false``, decimal
numbers and quoted text are read as usual. (YAML 1.2 itself drops all four forms.)
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class AmbiguousYAML(yaml.MarkedYAMLError):
    """A YAML document that PyYAML would read differently from what it seems to say (``problem_mark`` is where)."""


# YAML 1.1 integer and float forms that YAML 1.2 reads as text: octal with a leading 0, and base 60.
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_BASE_60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`AmbiguousYAML` for duplicate keys, booleans other than
    ``true``/``false``, leading-zero octals and base-60 numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<': merged keys may be overridden, as YAML says
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader refuses it itself
                continue
            if first is not None:
                raise AmbiguousYAML(
                    problem=f"key {key!r} given twice (first at line {first}); "
                    "the last value would silently win (a mapping's keys must be unique)",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        value = self.construct_scalar(node)
        if value.lower() not in ("true", "false"):
            raise AmbiguousYAML(
                problem=f"{value!r} is a YAML 1.1 boolean ({self.bool_values[value.lower()]}), "
                "not allowed: write true or false, or quote it for text",
                problem_mark=node.start_mark,
            )
        return value.lower() == "true"

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        self._refuse_number_form(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        self._refuse_number_form(node)
        return super().construct_yaml_float(node)

    def _refuse_number_form(self, node: yaml.ScalarNode) -> None:
        value = self.construct_scalar(node)
        if _OCTAL.fullmatch(value):
            meant = "octal number " + str(int(value.replace("_", ""), 8))
        elif _BASE_60.fullmatch(value):
            meant = "base-60 number"
        else:
            return
        raise AmbiguousYAML(
            problem=f"{value} is a YAML 1.1 {meant}, not allowed: "
            "write the number without a leading 0 or ':', or quote it for text",
            problem_mark=node.start_mark,
        )


StrictLoader.add_constructor("tag:yaml.org,2002:bool", StrictLoader.construct_yaml_bool)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


def load(text: str) -> Any:
    """The document in ``text``; raises :class:`AmbiguousYAML` or PyYAML's own ``yaml.YAMLError``."""
    return yaml.load(text, Loader=StrictLoader)
