"""Security scan of src/: no unsafe deserialisation, no remote code, safetensors when saving.

The scan parses every module's AST (not its text, so comments, docstrings and method names such as
``model.eval()`` cannot cause false alarms, and an aliased import such as ``from torch import load
as tl`` cannot hide a call). Rules (each finding names file, line and rule):

* ``torch.load`` must pass ``weights_only=True``; ``pickle``/``cPickle``/``_pickle``/``marshal``/
  ``dill``/``shelve``/``cloudpickle`` are never imported; ``joblib.load``, ``pandas.read_pickle`` and
  ``torch.jit.load`` are never called; ``numpy.load`` never gets ``allow_pickle`` other than False;
  ``yaml.load`` only with a Safe loader (or a class of the same module derived from one), never ``yaml.unsafe_load``/``full_load``/``unsafe_load_all``;
  no builtin ``eval``/``exec``.
* ``trust_remote_code`` is never the literal True (keyword, dict entry, field or argument default),
  a config field or argument named ``trust_remote_code`` defaults to False, and every
  ``from_pretrained`` call passes ``trust_remote_code`` explicitly, except the one wrapper in
  ``models/loading.py`` that forwards ``**kwargs`` (its callers are checked at run time below).
* ``safe_serialization`` is never False; ``torch.save`` (a pickle-format write) only where listed in
  :data:`PICKLE_WRITES_ALLOWED` with the reason.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "shelve", "cloudpickle"}
FORBIDDEN_CALLS = {"joblib.load": "joblib.load unpickles", "pandas.read_pickle": "read_pickle unpickles",
                   "torch.jit.load": "TorchScript archives can run code",
                   "yaml.unsafe_load": "yaml.unsafe_load", "yaml.full_load": "yaml.full_load",
                   "yaml.unsafe_load_all": "yaml.unsafe_load_all", "yaml.load_all": "yaml.load_all"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
# (path relative to src/, function) -> why a **kwargs from_pretrained is allowed there
SPLAT_FROM_PRETRAINED_ALLOWED = {
    ("alignlab/models/loading.py", "_from_pretrained"):
        "every caller builds kwargs with trust_remote_code=settings.trust_remote_code "
        "(test_loading_passes_trust_remote_code_setting)"}
# path relative to src/ -> why torch.save is acceptable there
PICKLE_WRITES_ALLOWED = {
    "alignlab/train/reference_cache.py":
        "a plain tensor block, read back only with torch.load(weights_only=True)"}


class _Scanner(ast.NodeVisitor):
    """Collects ``(line, rule)`` findings for one module."""

    def __init__(self, rel: str):
        self.rel, self.findings, self.aliases, self.func = rel, [], {}, [None]
        self.safe_loaders = set(SAFE_YAML_LOADERS)

    # -- names
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            if a.name.split(".")[0] in FORBIDDEN_MODULES:
                self._add(node, f"imports {a.name} (unsafe deserialisation)")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] in FORBIDDEN_MODULES:
            self._add(node, f"imports from {module} (unsafe deserialisation)")
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{module}.{a.name}"

    def dotted(self, node: ast.AST) -> str | None:
        """``torch.load`` for ``torch.load`` / ``th.load`` (import torch as th) / ``load`` (from torch
        import load); None when the callee is not a plain name chain."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    # -- scopes
    def visit_FunctionDef(self, node) -> None:
        for arg, default in _defaults(node.args):
            if arg == "trust_remote_code" and not _is_const(default, False):
                self._add(default, "argument trust_remote_code does not default to False")
        self.func.append(node.name)
        self.generic_visit(node)
        self.func.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        target = node.target
        if isinstance(target, ast.Name) and target.id == "trust_remote_code" and \
                not _is_const(node.value, False):
            self._add(node, "field trust_remote_code does not default to False")
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            if _is_const(key, "trust_remote_code") and _is_const(value, True):
                self._add(node, "trust_remote_code=True in a dict")
            if _is_const(key, "safe_serialization") and _is_const(value, False):
                self._add(node, "safe_serialization=False in a dict")
        self.generic_visit(node)

    # -- calls
    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func) or ""
        kw = {k.arg: k.value for k in node.keywords if k.arg is not None}
        splat = any(k.arg is None for k in node.keywords)
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec") and \
                node.func.id not in self.aliases:
            self._add(node, f"builtin {node.func.id}()")
        if name == "torch.load" and not _is_const(kw.get("weights_only"), True):
            self._add(node, "torch.load without weights_only=True")
        if name in FORBIDDEN_CALLS:
            self._add(node, FORBIDDEN_CALLS[name])
        if name.split(".")[0] in FORBIDDEN_MODULES:
            self._add(node, f"calls {name}")
        if name == "numpy.load" and "allow_pickle" in kw and not _is_const(kw["allow_pickle"], False):
            self._add(node, "numpy.load with allow_pickle")
        if name == "yaml.load":
            loader = kw.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            if _last_name(loader) not in self.safe_loaders:
                self._add(node, "yaml.load without a Safe loader")
        if name == "torch.save" and self.rel not in PICKLE_WRITES_ALLOWED:
            self._add(node, "torch.save writes pickle (save safetensors)")
        if _is_const(kw.get("trust_remote_code"), True):
            self._add(node, "trust_remote_code=True")
        if "safe_serialization" in kw and _is_const(kw["safe_serialization"], False):
            self._add(node, "safe_serialization=False")
        allowed_splat = splat and (self.rel, self.func[-1]) in SPLAT_FROM_PRETRAINED_ALLOWED
        if isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained" and \
                "trust_remote_code" not in kw and not allowed_splat:
            self._add(node, "from_pretrained without an explicit trust_remote_code")
        self.generic_visit(node)

    def _add(self, node: ast.AST, rule: str) -> None:
        self.findings.append((getattr(node, "lineno", 0), rule))


def _defaults(args: ast.arguments):
    positional = args.posonlyargs + args.args
    for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
        yield arg.arg, default
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        if default is not None:
            yield arg.arg, default


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is type(value) and node.value == value


def _last_name(node) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _safe_loaders(tree: ast.Module) -> set[str]:
    """The safe YAML loaders plus the module's classes derived from one (e.g. a SafeLoader subclass
    that refuses duplicate keys)."""
    safe = set(SAFE_YAML_LOADERS)
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    grew = True
    while grew:
        grew = False
        for node in classes:
            if node.name not in safe and any(_last_name(b) in safe for b in node.bases):
                safe.add(node.name)
                grew = True
    return safe


def scan_source(source: str, rel: str = "snippet.py") -> list[str]:
    """Findings ``"rel:line: rule"`` for one module's source."""
    scanner = _Scanner(rel)
    tree = ast.parse(source, filename=rel)
    scanner.safe_loaders = _safe_loaders(tree)
    scanner.visit(tree)
    return [f"{rel}:{line}: {rule}" for line, rule in sorted(scanner.findings)]


def scan_tree(root: Path = SRC) -> list[str]:
    """Findings for every ``.py`` file under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        found += scan_source(path.read_text(), path.relative_to(root).as_posix())
    return found


# ----------------------------------------------------------------------------- the scan


def test_src_has_no_unsafe_deserialisation_or_remote_code():
    files = list(SRC.rglob("*.py"))
    assert len(files) > 100  # the scan really walks the package
    assert scan_tree() == []


def test_allowlists_point_at_real_code():
    """Every allowlist entry still names code that exists (a stale entry would hide nothing but
    would mislead the next reader)."""
    for rel, func in SPLAT_FROM_PRETRAINED_ALLOWED:
        tree = ast.parse((SRC / rel).read_text())
        assert func in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    for rel in PICKLE_WRITES_ALLOWED:
        assert "torch.save(" in (SRC / rel).read_text()
        assert "weights_only=True" in (SRC / rel).read_text()


# ----------------------------------------------------------------------------- the scanner itself

PLANTED = [
    ("import torch\nx = torch.load(path)\n", ["snippet.py:2: torch.load without weights_only=True"]),
    ("import torch\nx = torch.load(path, weights_only=False)\n",
     ["snippet.py:2: torch.load without weights_only=True"]),
    ("from torch import load as tl\nx = tl(path, map_location='cpu')\n",
     ["snippet.py:2: torch.load without weights_only=True"]),
    ("import torch as th\nx = th.load(p, weights_only=True)\n", []),
    ("import pickle\n", ["snippet.py:1: imports pickle (unsafe deserialisation)"]),
    ("from dill import loads\n", ["snippet.py:1: imports from dill (unsafe deserialisation)"]),
    ("import marshal as m\n", ["snippet.py:1: imports marshal (unsafe deserialisation)"]),
    ("import joblib\njoblib.load(p)\n", ["snippet.py:2: joblib.load unpickles"]),
    ("import numpy as np\nnp.load(p, allow_pickle=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n",
     ["snippet.py:2: numpy.load with allow_pickle"]),
    (("import yaml\nyaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\nyaml.safe_load(s)\n"
      "yaml.load(s, yaml.FullLoader)\nyaml.unsafe_load(s)\n"),
     ["snippet.py:2: yaml.load without a Safe loader", "snippet.py:5: yaml.load without a Safe loader",
      "snippet.py:6: yaml.unsafe_load"]),
    (("import yaml\nclass L(yaml.SafeLoader):\n    pass\nclass M(L):\n    pass\nclass U(yaml.Loader):\n"
      "    pass\nyaml.load(s, Loader=M)\nyaml.load(s, Loader=U)\n"),
     ["snippet.py:9: yaml.load without a Safe loader"]),
    ("x = eval(row['expr'])\nexec(code)\nmodel.eval()\n",
     ["snippet.py:1: builtin eval()", "snippet.py:2: builtin exec()"]),
    ("m = AutoModel.from_pretrained(p)\nt = AutoTokenizer.from_pretrained(p, trust_remote_code=False)\n",
     ["snippet.py:1: from_pretrained without an explicit trust_remote_code"]),
    ("m = AutoModel.from_pretrained(p, trust_remote_code=True)\n",
     ["snippet.py:1: trust_remote_code=True"]),
    ("def f(**kw):\n    return AutoModel.from_pretrained(p, **kw)\n",
     ["snippet.py:2: from_pretrained without an explicit trust_remote_code"]),
    ("kw = {'trust_remote_code': True, 'safe_serialization': False}\n",
     ["snippet.py:1: safe_serialization=False in a dict", "snippet.py:1: trust_remote_code=True in a dict"]),
    ("class S:\n    trust_remote_code: bool = True\n",
     ["snippet.py:2: field trust_remote_code does not default to False"]),
    ("def load(path, *, trust_remote_code=True):\n    pass\n",
     ["snippet.py:1: argument trust_remote_code does not default to False"]),
    ("model.save_pretrained(out, safe_serialization=False)\n", ["snippet.py:1: safe_serialization=False"]),
    ("import torch\ntorch.save(state, 'x.pt')\n", ["snippet.py:2: torch.save writes pickle (save safetensors)"]),
    ("'''torch.load(path) and import pickle, in a docstring'''\n# eval(x)\n", []),
]


@pytest.mark.parametrize("source, expected", PLANTED)
def test_scanner_on_planted_snippets(source, expected):
    assert scan_source(source) == expected


def test_planted_torch_load_in_the_package_fails_the_scan(tmp_path):
    """A copy of a real module with ``torch.load(path)`` added is reported with its file and line."""
    rel = "alignlab/train/reference_cache.py"
    original = (SRC / rel).read_text()
    target = tmp_path / rel
    target.parent.mkdir(parents=True)
    target.write_text(original + textwrap.dedent("""
        def sneaky(path):
            return torch.load(path)
        """))
    line = len(original.splitlines()) + 3
    assert scan_tree(tmp_path) == [f"{rel}:{line}: torch.load without weights_only=True"]


def test_loading_passes_trust_remote_code_setting(monkeypatch, tmp_path):
    """The loaders forward ``ModelSettings.trust_remote_code`` (default False) to every
    ``from_pretrained`` they make (the ``**kwargs`` the scan allows in ``_from_pretrained``)."""
    from test_models_tiny import save_tiny_lm

    from alignlab.config import ModelSettings
    from alignlab.models import loading

    seen = []
    real = loading._from_pretrained

    def spy(auto_cls, source, kwargs, what):
        seen.append((auto_cls.__name__, kwargs.get("trust_remote_code", "missing")))
        return real(auto_cls, source, kwargs, what)

    monkeypatch.setattr(loading, "_from_pretrained", spy)
    folder = str(save_tiny_lm(tmp_path / "lm"))
    assert ModelSettings(path=folder).trust_remote_code is False
    loading.load_causal_lm(ModelSettings(path=folder), for_training=False)
    loading.load_reward_model(ModelSettings(path=folder), for_training=False)
    assert seen == [("AutoTokenizer", False), ("AutoModelForCausalLM", False),
                    ("AutoTokenizer", False), ("AutoModelForSequenceClassification", False)]
