"""The layering rules, checked statically: a module's path says which thread it runs on and
what it may import (see the docstrings of bot/, engine/ and cogs/).

Nothing here imports the code it checks: every .py file under bot/, engine/, cogs/ and data/
is parsed with `ast`. An import inside a function runs when the function is called; one under
`if TYPE_CHECKING:` never runs, but still counts where a rule is about layering rather than
import time. The second half of the file runs the same checks on small synthetic trees, so a
checker that finds nothing cannot pass unnoticed.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "engine", "cogs", "data")
APP_MODULE = "bot/client/app.py"
TORCH_STACK = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


@dataclass(frozen=True)
class Import:
    """One module an import statement (or `importlib.import_module("...")`) brings in."""

    path: str  # the importing file, relative to the tree's root
    line: int
    importer: str  # the importing module's dotted name
    target: str  # the imported module's dotted name, relative imports resolved
    names: tuple[str, ...]  # what `from target import ...` takes; empty for a module
    in_function: bool
    type_only: bool  # under `if TYPE_CHECKING:`

    @property
    def at_import_time(self) -> bool:
        return not (self.in_function or self.type_only)

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        where = " inside a function" if self.in_function else ""
        if self.type_only:
            where += " under TYPE_CHECKING"
        return f"{self.path}:{self.line} imports {self.target}{names}{where}"


@dataclass(frozen=True)
class Source:
    path: str
    module: str
    text: str
    syntax: ast.Module


@dataclass(frozen=True, repr=False)
class Tree:
    sources: tuple[Source, ...]
    modules: frozenset[str]
    imports: tuple[Import, ...]
    extensions: tuple[str, ...]  # bot/client/app.py's EXTENSIONS

    def __repr__(self) -> str:  # pytest prints the fixture on failure: keep it short
        return f"Tree({len(self.sources)} files, {len(self.imports)} imports)"


def within(name: str, *prefixes: str) -> bool:
    """Whether a dotted name is one of `prefixes` or inside one of them."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def module_name(relative: Path) -> str:
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(source: Source, level: int, module: str | None) -> str:
    """The absolute name a `from {'.' * level}{module} import` refers to."""
    if level == 0:
        return module or ""
    package = source.module.split(".")
    if not source.path.endswith("__init__.py"):
        package = package[:-1]
    package = package[: len(package) - (level - 1)]
    return ".".join([*package, module] if module else package)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_module_target(call: ast.Call) -> str | None:
    """The module of `importlib.import_module("x")` or `__import__("x")` with a literal name."""
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


class ImportCollector(ast.NodeVisitor):
    """Every import of one source file, with whether it runs at import time."""

    def __init__(self, source: Source, modules: frozenset[str]) -> None:
        self.source = source
        self.modules = modules
        self.in_function = False
        self.type_only = False
        self.found: list[Import] = []

    def add(self, node: ast.AST, target: str, names: tuple[str, ...] = ()) -> None:
        line = getattr(node, "lineno", 0)
        self.found.append(
            Import(
                self.source.path,
                line,
                self.source.module,
                target,
                names,
                self.in_function,
                self.type_only,
            )
        )

    def visit_function(self, node: ast.AST) -> None:
        outer, self.in_function = self.in_function, True
        self.generic_visit(node)
        self.in_function = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.visit_function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit_function(node)

    def visit_If(self, node: ast.If) -> None:
        if not is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer, self.type_only = self.type_only, True
        for statement in node.body:
            self.visit(statement)
        self.type_only = outer
        for statement in node.orelse:
            self.visit(statement)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = resolve(self.source, node.level, node.module)
        # `from engine import pipelines` imports the module engine.pipelines.
        plain = [a.name for a in node.names if f"{base}.{a.name}" not in self.modules]
        for alias in node.names:
            if f"{base}.{alias.name}" in self.modules:
                self.add(node, f"{base}.{alias.name}")
        if plain:
            self.add(node, base, tuple(plain))

    def visit_Call(self, node: ast.Call) -> None:
        target = import_module_target(node)
        if target is not None:
            self.add(node, target)
        self.generic_visit(node)


def read_sources(root: Path) -> tuple[Source, ...]:
    paths = sorted(path for package in PACKAGES for path in (root / package).rglob("*.py"))
    sources = []
    for path in paths:
        relative = path.relative_to(root)
        text = path.read_text(encoding="utf-8")
        syntax = ast.parse(text, filename=str(relative))
        sources.append(Source(relative.as_posix(), module_name(relative), text, syntax))
    return tuple(sources)


def read_extensions(sources: tuple[Source, ...]) -> tuple[str, ...]:
    """EXTENSIONS from bot/client/app.py, read without importing discord."""
    for source in sources:
        if source.path != APP_MODULE:
            continue
        for statement in source.syntax.body:
            if isinstance(statement, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "EXTENSIONS"
                for target in statement.targets
            ):
                return tuple(ast.literal_eval(statement.value))
    return ()


def load_tree(root: Path) -> Tree:
    sources = read_sources(root)
    modules = frozenset(source.module for source in sources)
    imports: list[Import] = []
    for source in sources:
        collector = ImportCollector(source, modules)
        collector.visit(source.syntax)
        imports.extend(collector.found)
    return Tree(sources, modules, tuple(imports), read_extensions(sources))


def offending(tree: Tree, broken: Callable[[Import], bool]) -> list[str]:
    return [str(found) for found in tree.imports if broken(found)]


# -- the rules: each returns one line per offence --------------------------------------


def data_offences(tree: Tree) -> list[str]:
    """Rule 1: data/ imports none of bot, engine, cogs, discord, torch."""
    return offending(
        tree,
        lambda i: (
            within(i.importer, "data")
            and within(i.target, "bot", "engine", "cogs", "discord", "torch")
        ),
    )


def engine_offences(tree: Tree) -> list[str]:
    """Rule 2: engine/ imports nothing of bot, cogs, data, discord, aiosqlite."""
    return offending(
        tree,
        lambda i: (
            within(i.importer, "engine")
            and within(i.target, "bot", "cogs", "data", "discord", "aiosqlite")
        ),
    )


def api_imaging_breaks(found: Import) -> bool:
    ours = within(found.target, *PACKAGES)
    if within(found.importer, "engine.api"):
        heavy = within(found.target, *TORCH_STACK, "numpy", "PIL")
        return heavy or (ours and not within(found.target, "engine.api"))
    if within(found.importer, "engine.imaging"):
        heavy = within(found.target, *TORCH_STACK)
        return heavy or (ours and not within(found.target, "engine.api", "engine.imaging"))
    return False


def api_imaging_offences(tree: Tree) -> list[str]:
    """Rule 3: engine/api/ is torch-, numpy- and Pillow-free and of ours imports only
    engine.api; engine/imaging/ is torch-free and imports only engine.api and engine.imaging."""
    return offending(tree, api_imaging_breaks)


def worker_offences(tree: Tree) -> list[str]:
    """Rule 4: engine/worker.py loads torch and the pipelines only on the engine thread."""
    return offending(
        tree,
        lambda i: (
            i.importer == "engine.worker"
            and i.at_import_time
            and within(i.target, *TORCH_STACK, "engine.pipelines", "engine.training")
        ),
    )


def engine_use_breaks(found: Import) -> bool:
    if not within(found.importer, "bot", "cogs"):
        return False
    # The console (doctor, selftest) runs before or without the bot's event loop: inside its
    # functions it may probe torch and build a tiny model, never at import time.
    console_lazily = within(found.importer, "bot.cli") and not found.at_import_time
    if within(found.target, *TORCH_STACK):
        return not console_lazily
    if not within(found.target, "engine"):
        return False
    if within(found.target, "engine.api", "engine.imaging", "engine.worker"):
        return False
    return not (console_lazily and within(found.target, "engine.pipelines"))


def engine_use_offences(tree: Tree) -> list[str]:
    """Rule 5: bot/ and cogs/ use engine.api, engine.imaging and engine.worker only and never
    the torch stack (bot/cli may import both inside functions)."""
    return offending(tree, engine_use_breaks)


def discord_breaks(found: Import) -> bool:
    if within(found.importer, "bot.client", "cogs"):
        return False
    if not within(found.target, "discord", "aiohttp", "bot.client", "cogs"):
        return False
    # `python -m bot` reaches the client only when it starts the bot, not for the console.
    started_lazily = found.importer == "bot.__main__" and not found.at_import_time
    return not (started_lazily and within(found.target, "bot.client"))


def discord_offences(tree: Tree) -> list[str]:
    """Rule 6: outside bot/client/ and cogs/ nothing imports discord, aiohttp, or the modules
    that do (bot.client, cogs); bot/__main__.py imports bot.client inside a function only."""
    return offending(tree, discord_breaks)


def sql_breaks(found: Import) -> bool:
    if not within(found.importer, "cogs"):
        return False
    if within(found.target, "aiosqlite", "sqlite3", "data.store"):
        return True
    # data/__init__.py re-exports the store; repositories are where the SQL is.
    takes_sql = any(name == "Store" or name.endswith("Repository") for name in found.names)
    return within(found.target, "data") and takes_sql


def sql_offences(tree: Tree) -> list[str]:
    """Rule 7: cogs/ import data's records, never the store, a repository or a SQLite driver."""
    return offending(tree, sql_breaks)


def extension_offences(tree: Tree) -> list[str]:
    """Rule 8: no extension imports another, and cogs/ui/ imports no extension."""

    def breaks(found: Import) -> bool:
        others = [e for e in tree.extensions if e != found.importer]
        if found.importer in tree.extensions or within(found.importer, "cogs.ui"):
            return within(found.target, *others)
        return False

    return offending(tree, breaks)


def classes_in(syntax: ast.Module) -> Iterator[ast.ClassDef]:
    return (node for node in ast.walk(syntax) if isinstance(node, ast.ClassDef))


def size_offences(tree: Tree) -> list[str]:
    """Rule 9: no module over MAX_MODULE_LINES lines, no class over MAX_CLASS_LINES."""
    found = []
    for source in tree.sources:
        lines = len(source.text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{source.path}: module is {lines} lines")
        for node in sorted(classes_in(source.syntax), key=lambda n: n.lineno):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_CLASS_LINES:
                found.append(f"{source.path}:{node.lineno}: class {node.name} is {length} lines")
    return found


def assert_clean(offences: list[str], why: str) -> None:
    if offences:
        pytest.fail(why + "\n" + "\n".join(f"  {offence}" for offence in offences), pytrace=False)


# -- today's tree ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> Tree:
    return load_tree(ROOT)


def test_the_checker_reads_the_whole_tree(tree: Tree) -> None:
    for package in PACKAGES:
        assert package in tree.modules, f"{package}/__init__.py was not found under {ROOT}"
    assert len(tree.imports) > 200, "suspiciously few imports: is the tree being read?"
    assert tree.extensions, f"EXTENSIONS was not found in {APP_MODULE}"
    missing = [name for name in tree.extensions if name not in tree.modules]
    assert not missing, f"EXTENSIONS in {APP_MODULE} names modules that do not exist: {missing}"


def test_data_imports_no_layer_above_it(tree: Tree) -> None:
    assert_clean(
        data_offences(tree),
        "Rule 1 broken: data/ imports bot, engine, cogs, discord or torch. The store is the "
        "bottom layer that every side (the bot, the console, the books) opens; what it imports "
        "comes along everywhere and turns the layers into a cycle.",
    )


def test_engine_imports_no_bot_discord_or_store(tree: Tree) -> None:
    assert_clean(
        engine_offences(tree),
        "Rule 2 broken: engine/ imports bot, cogs, data, discord or aiosqlite. The engine "
        "turns plain parameters into images on its own thread (and, later, in a Redis worker "
        "with no Discord and no database); only the bot's services touch both sides.",
    )


def test_engine_api_and_imaging_stay_light(tree: Tree) -> None:
    assert_clean(
        api_imaging_offences(tree),
        "Rule 3 broken: engine/api/ imports torch, the diffusers stack, numpy, Pillow or "
        "engine modules outside engine.api, or engine/imaging/ imports the torch stack or "
        "engine modules outside engine.api and engine.imaging. The bot imports both on its "
        "event loop: torch there takes seconds to import and stalls Discord's heartbeat.",
    )


def test_worker_loads_torch_only_on_the_engine_thread(tree: Tree) -> None:
    assert_clean(
        worker_offences(tree),
        "Rule 4 broken: engine/worker.py imports torch, diffusers, transformers, "
        "engine.pipelines or engine.training at module level. The bot imports the worker on "
        "its event loop; those must load inside the engine thread's functions.",
    )


def test_bot_and_cogs_use_only_the_engines_light_rooms(tree: Tree) -> None:
    assert_clean(
        engine_use_offences(tree),
        "Rule 5 broken: bot/ or cogs/ import torch, diffusers, transformers, peft, "
        "accelerate or safetensors, or an engine module other than engine.api, "
        "engine.imaging and engine.worker (bot/cli may import engine.pipelines and torch "
        "inside a function, never at module level). Torch on the event loop stalls Discord's "
        "heartbeat, and CUDA touched off the engine thread races the pipelines for the GPU.",
    )


def test_only_the_client_and_cogs_import_discord(tree: Tree) -> None:
    assert_clean(
        discord_offences(tree),
        "Rule 6 broken: a module outside bot/client/ and cogs/ imports discord, aiohttp, "
        "bot.client or cogs (bot/__main__.py may import bot.client inside a function). The "
        "services, the console and the engine must run without Discord: the console "
        "(`python -m bot dream`, `doctor`, `db`) and the tests use them with no gateway.",
    )


def test_cogs_run_no_sql(tree: Tree) -> None:
    assert_clean(
        sql_offences(tree),
        "Rule 7 broken: a cog imports aiosqlite, sqlite3, data.store or a repository. Cogs "
        "validate, defer, call a service and render; the SQL (and its transactions, such as "
        "charging credits) belongs to the services and data/.",
    )


def test_extensions_do_not_import_each_other(tree: Tree) -> None:
    assert_clean(
        extension_offences(tree),
        "Rule 8 broken: an extension imports another extension, or cogs/ui/ imports an "
        "extension. Each extension loads and reloads on its own; what several share belongs "
        "in cogs/ui/, or a reload of one leaves the others holding stale objects.",
    )


def test_no_module_or_class_is_too_big(tree: Tree) -> None:
    assert_clean(
        size_offences(tree),
        f"Rule 9 broken: a module is over {MAX_MODULE_LINES} lines or a class over "
        f"{MAX_CLASS_LINES}. A file that big has a second concern: split it there.",
    )


# -- the checker on synthetic trees ----------------------------------------------------


def make_tree(root: Path, files: Mapping[str, str]) -> Tree:
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_tree(root)


def test_the_checker_resolves_relative_and_submodule_imports(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "engine/pipelines/__init__.py": "from . import loading\n",
            "engine/pipelines/loading.py": "from .lora import adapters\nfrom .. import api\n",
            "engine/pipelines/lora.py": "",
            "engine/api/__init__.py": "",
            "bot/jobs/queue.py": "from engine import worker, api\nfrom engine.api import X, Y\n",
            "engine/worker.py": "",
        },
    )
    assert [str(i) for i in tree.imports] == [
        "bot/jobs/queue.py:1 imports engine.worker",
        "bot/jobs/queue.py:1 imports engine.api",
        "bot/jobs/queue.py:2 imports engine.api (X, Y)",
        "engine/pipelines/__init__.py:1 imports engine.pipelines.loading",
        "engine/pipelines/loading.py:1 imports engine.pipelines.lora (adapters)",
        "engine/pipelines/loading.py:2 imports engine.api",
    ]


def test_the_checker_tells_function_and_type_checking_imports(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "engine/worker.py": """\
                from typing import TYPE_CHECKING
                import importlib

                if TYPE_CHECKING:
                    import torch
                else:
                    import queue

                class Worker:
                    import threading

                    def run(self):
                        importlib.import_module("diffusers")
                        run = lambda: __import__("peft")
                """,
        },
    )
    assert [str(i) for i in tree.imports] == [
        "engine/worker.py:1 imports typing (TYPE_CHECKING)",
        "engine/worker.py:2 imports importlib",
        "engine/worker.py:5 imports torch under TYPE_CHECKING",
        "engine/worker.py:7 imports queue",
        "engine/worker.py:10 imports threading",
        "engine/worker.py:13 imports diffusers inside a function",
        "engine/worker.py:14 imports peft inside a function",
    ]


def test_rule_1_refuses_data_importing_upwards(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "data/jobs.py": """\
                from typing import TYPE_CHECKING

                import aiosqlite

                from data.store import Store

                if TYPE_CHECKING:
                    from engine.api.params import GenerationParams

                def f():
                    import discord
                """,
        },
    )
    assert data_offences(tree) == [
        "data/jobs.py:8 imports engine.api.params (GenerationParams) under TYPE_CHECKING",
        "data/jobs.py:11 imports discord inside a function",
    ]


def test_rule_2_refuses_engine_importing_the_bot_or_the_store(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "engine/pipelines/txt2img.py": "import torch\nfrom data.jobs import Job\n",
            "engine/worker.py": "def f():\n    import aiosqlite\n    from bot import settings\n",
            "bot/settings.py": "",
        },
    )
    assert engine_offences(tree) == [
        "engine/pipelines/txt2img.py:2 imports data.jobs (Job)",
        "engine/worker.py:2 imports aiosqlite inside a function",
        "engine/worker.py:3 imports bot.settings inside a function",
    ]


def test_rule_3_keeps_engine_api_and_imaging_light(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "engine/api/params.py": """\
                import re
                from PIL import Image
                from ..pipelines import loading
                from engine.api.specs import ModelSpec

                def f():
                    import numpy as np
                """,
            "engine/api/specs.py": "",
            "engine/imaging/masks.py": """\
                import numpy as np
                from PIL import Image
                from engine.api.params import X
                from engine.imaging.images import Y
                from engine.pipelines.loading import pick_device

                def f():
                    import torch
                """,
            "engine/pipelines/loading.py": "import torch\nimport numpy\n",
        },
    )
    assert api_imaging_offences(tree) == [
        "engine/api/params.py:2 imports PIL (Image)",
        "engine/api/params.py:3 imports engine.pipelines.loading",
        "engine/api/params.py:7 imports numpy inside a function",
        "engine/imaging/masks.py:5 imports engine.pipelines.loading (pick_device)",
        "engine/imaging/masks.py:8 imports torch inside a function",
    ]


def test_rule_4_lets_the_worker_load_torch_only_inside_functions(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "engine/worker.py": """\
                from typing import TYPE_CHECKING
                import torch
                from engine.training import trainer
                from engine.api.errors import EngineError

                if TYPE_CHECKING:
                    from engine.pipelines.loading import ModelCache

                def run():
                    import torch
                    from engine.pipelines.txt2img import generate_batch
                """,
            "engine/training/trainer.py": "",
            "engine/pipelines/__init__.py": "import torch\n",
        },
    )
    assert worker_offences(tree) == [
        "engine/worker.py:2 imports torch",
        "engine/worker.py:3 imports engine.training.trainer",
    ]


def test_rule_5_keeps_torch_and_the_pipelines_off_the_bot(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "cogs/dream.py": "import torch\nfrom engine import worker\nfrom engine import api\n",
            "cogs/images.py": "from engine import pipelines\n",
            "engine/worker.py": "",
            "engine/api/__init__.py": "",
            "engine/pipelines/__init__.py": "",
            "bot/cli/console.py": """\
                from typing import TYPE_CHECKING
                from engine.pipelines.tiny import save_tiny_model

                if TYPE_CHECKING:
                    from engine.pipelines.loading import ModelCache

                def selftest():
                    from engine.pipelines.tiny import save_tiny_model
                    from engine.training.trainer import train
                    import diffusers
                """,
            "bot/jobs/queue.py": """\
                from typing import TYPE_CHECKING
                from engine.imaging.images import encode_png

                if TYPE_CHECKING:
                    import torch

                def f():
                    from engine.pipelines.loading import pick_device
                """,
        },
    )
    assert engine_use_offences(tree) == [
        "bot/cli/console.py:2 imports engine.pipelines.tiny (save_tiny_model)",
        "bot/cli/console.py:9 imports engine.training.trainer (train) inside a function",
        "bot/jobs/queue.py:5 imports torch under TYPE_CHECKING",
        "bot/jobs/queue.py:8 imports engine.pipelines.loading (pick_device) inside a function",
        "cogs/dream.py:1 imports torch",
        "cogs/images.py:1 imports engine.pipelines",
    ]


def test_rule_6_keeps_discord_in_the_client_and_the_cogs(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "bot/__main__.py": """\
                from bot.client.runner import run_bot

                def main():
                    from bot.client.runner import run_bot
                """,
            "bot/client/runner.py": "import aiohttp\nimport discord\nimport cogs.dream\n",
            "bot/cli/console.py": "from bot.client.runner import build_engine\n",
            "bot/jobs/queue.py": """\
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from bot.client.app import SDBot

                def f():
                    import discord
                """,
            "bot/client/app.py": "",
            "cogs/dream.py": "import discord\nfrom bot.client.app import SDBot\n",
            "engine/worker.py": "import aiohttp\n",
        },
    )
    assert discord_offences(tree) == [
        "bot/__main__.py:1 imports bot.client.runner (run_bot)",
        "bot/cli/console.py:1 imports bot.client.runner (build_engine)",
        "bot/jobs/queue.py:4 imports bot.client.app (SDBot) under TYPE_CHECKING",
        "bot/jobs/queue.py:7 imports discord inside a function",
        "engine/worker.py:1 imports aiohttp",
    ]


def test_rule_7_keeps_sql_out_of_the_cogs(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            "cogs/credits.py": """\
                from typing import TYPE_CHECKING
                from data.credits import LedgerEntry, CreditRepository
                from data.jobs import Job
                from data import Store, Job

                if TYPE_CHECKING:
                    import aiosqlite

                def f():
                    import sqlite3
                    from data.store import Store
                """,
            "bot/community/credits.py": "from data.store import Store\nimport aiosqlite\n",
        },
    )
    assert sql_offences(tree) == [
        "cogs/credits.py:2 imports data.credits (LedgerEntry, CreditRepository)",
        "cogs/credits.py:4 imports data (Store, Job)",
        "cogs/credits.py:7 imports aiosqlite under TYPE_CHECKING",
        "cogs/credits.py:10 imports sqlite3 inside a function",
        "cogs/credits.py:11 imports data.store (Store) inside a function",
    ]


def test_rule_8_keeps_extensions_apart(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {
            APP_MODULE: 'EXTENSIONS = (\n    "cogs.dream",\n    "cogs.images",\n)\n',
            "cogs/dream.py": "from cogs.ui.presenter import DreamPresenter\nfrom . import images\n",
            "cogs/images.py": """\
                from typing import TYPE_CHECKING
                from cogs import dream
                from cogs.images import helper

                if TYPE_CHECKING:
                    from cogs.dream import Uploads

                def f():
                    from .dream import start_job
                """,
            "cogs/ui/presenter.py": "from cogs.dream import download\nfrom . import buttons\n",
            "cogs/ui/buttons.py": "",
        },
    )
    assert tree.extensions == ("cogs.dream", "cogs.images")
    assert extension_offences(tree) == [
        "cogs/dream.py:2 imports cogs.images",
        "cogs/images.py:2 imports cogs.dream",
        "cogs/images.py:6 imports cogs.dream (Uploads) under TYPE_CHECKING",
        "cogs/images.py:9 imports cogs.dream (start_job) inside a function",
        "cogs/ui/presenter.py:1 imports cogs.dream (download)",
    ]


def test_rule_9_measures_modules_and_classes(tmp_path: Path) -> None:
    body = "".join(f"    x{n} = {n}\n" for n in range(MAX_CLASS_LINES - 1))
    tree = make_tree(
        tmp_path,
        {
            "bot/fits.py": "x = 1\n" * MAX_MODULE_LINES,
            "bot/long.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
            "cogs/fits.py": f"class Fits:\n{body}",
            "cogs/long.py": f"\n\nclass Long:\n{body}    y = 0\n",
        },
    )
    assert size_offences(tree) == [
        f"bot/long.py: module is {MAX_MODULE_LINES + 1} lines",
        f"cogs/long.py:3: class Long is {MAX_CLASS_LINES + 1} lines",
    ]
