"""The command line, generated from JobConfig: each field's flag, parser and help come from
the field itself (its type, and `metadata["help"]`), option sections included.

    >>> [f.flag for f in flags()][:3]
    ['--data-root', '--model', '--output']

`rayinfer run` and `submit` add these flags, each task's option flags (`task_flags`:
the fields of every registered task's `options_type`, set into `options`) and each runtime
backend's (`runtime_flags`: its `options_type`, set into `runtime_options`) (jobs/cli.py),
`rayinfer submit` writes a config back as the same flags (jobs/submit.py), and `rayinfer
eval` takes the task option fields marked `metadata["eval"]` (the ones that change the
metrics, not the predictions).

Spelling: `--field-name` (`metadata["flag"]` where it differs); a bool that is off by default is
a switch, one that is on by default a `--no-field-name` switch, and `bool | None` takes
true/false. Task options keep their own names (`--conf-thres` sets `options.conf_thres`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rayinfer.jobs.config import JobConfig, optional_of


@dataclass(frozen=True)
class Flag:
    """One command-line option of a config field."""

    flag: str  # "--conf-thres"
    key: str  # "options.conf_thres": where the value goes
    parse: Callable[[str], Any] | None  # None: a switch
    help: str
    default: Any
    #: a switch that sets the field to False (`--no-report`)
    negative: bool = False
    #: the field also applies to `rayinfer eval`
    eval: bool = False
    #: the values it takes, where a registry names them
    choices: tuple[str, ...] | None = None

    @property
    def metavar(self) -> str:
        return self.flag.lstrip("-").upper().replace("-", "_")


def flags(kind: type = JobConfig, prefix: str = "") -> list[Flag]:
    """The flags of a config dataclass, its option sections' fields included."""
    return list(_flags(kind, prefix))


def _flags(kind: type, prefix: str) -> Iterator[Flag]:
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        hint = hints[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.metadata.get("positional") or f.metadata.get("task_options") or f.metadata.get("runtime_options"):
            continue
        if dataclasses.is_dataclass(hint):
            yield from _flags(hint, f"{prefix}{f.name}.")
            continue
        spelled = f.name.replace("_", "-")
        negative = hint is bool and default is True
        yield Flag(
            flag=f.metadata.get("flag") or (f"--no-{spelled}" if negative else f"--{spelled}"),
            key=prefix + f.name,
            parse=None if hint is bool else parser_for(hint),
            help=f.metadata.get("help", ""),
            default=None if default is dataclasses.MISSING else default,
            negative=negative,
            eval=bool(f.metadata.get("eval")),
            choices=f.metadata.get("choices"),
        )


def task_flags(eval_only: bool = False) -> list[Flag]:
    """The option flags of every registered task (each sets `options.NAME`), one flag per
    spelling where two tasks share a field; the help says whose (`(coco) ...`). `eval_only`:
    only the fields marked `metadata["eval"]`."""
    from rayinfer.jobs.tasks import get_task, task_names

    found: dict[str, Flag] = {}
    owners: dict[str, list[str]] = {}
    for name in task_names():
        kind = get_task(name).options_type
        for f in flags(kind, "options.") if kind else []:
            if eval_only and not f.eval:
                continue
            owners.setdefault(f.flag, []).append(name)
            found.setdefault(f.flag, f)
    return [dataclasses.replace(f, help=f"({', '.join(owners[f.flag])}) {f.help}") for f in found.values()]


def runtime_flags() -> list[Flag]:
    """The option flags of every registered runtime backend, from its options dataclass: each
    sets its flat key (`--openvino-device` -> `openvino_device`), which the configuration files
    under `runtime_options.openvino.device`. The help says whose (`(openvino) ...`)."""
    from rayinfer.actors.backends import backends, option_flag, option_key

    out = []
    for b in backends():
        kind = getattr(b, "options_type", None)
        for f, field in zip(flags(kind), dataclasses.fields(kind)) if kind else []:
            out.append(dataclasses.replace(f, flag=option_flag(b, field), key=option_key(b, field),
                                           help=f"({b.name}) {f.help}"))
    return out


def parser_for(hint: Any) -> Callable[[str], Any]:
    """How one command-line word becomes a value of type `hint`."""
    hint, _ = optional_of(hint)
    args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        return _bool
    if origin is tuple:
        item = parser_for(args[0]) if args else str
        count = None if not args or args[-1] is Ellipsis else len(args)
        return _listed(item, count)
    if origin is dict:
        return _json_object
    return hint  # int, float, str


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _listed(item: Callable[[str], Any], count: int | None) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        values = tuple(item(v) for v in csv_list(text))
        if count is not None and len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated values, got {text!r}")
        return values

    parse.__name__ = "list"  # argparse names the type in its errors
    return parse


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object, or `key=value,key=value` (values as strings)."""
    if not text.lstrip().startswith("{") and "=" in text:
        pairs = [p.partition("=") for p in csv_list(text)]
        if any(not k.strip() or not sep for k, sep, _ in pairs):
            raise argparse.ArgumentTypeError(f"expected key=value,... or a JSON object, got {text!r}")
        return {k.strip(): v.strip() for k, _, v in pairs}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_flags(parser: argparse.ArgumentParser, options: list[Flag]) -> None:
    """Each flag, its default shown in its help; unset flags leave no attribute (YAML fills in)."""
    for o in options:
        shown = ",".join(map(str, o.default)) if isinstance(o.default, tuple) else o.default
        text = f"{o.help} (default: {shown})" if o.default not in (None, {}) and not o.negative else o.help
        if o.parse is None:
            parser.add_argument(o.flag, dest=o.key, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(o.flag, dest=o.key, type=o.parse, default=argparse.SUPPRESS, metavar=o.metavar,
                                help=f"{' | '.join(o.choices)}: {text}" if o.choices else text, choices=o.choices)


def given(args: argparse.Namespace, options: list[Flag]) -> dict[str, Any]:
    """The flags given on the command line as nested config data (switches as booleans)."""
    data: dict[str, Any] = {}
    values = vars(args)
    for o in options:
        if o.key not in values:
            continue
        value = (not values[o.key]) if o.negative else values[o.key]
        section, _, name = o.key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return data
