"""Architecture rules of the package: short functions and imports that run one way."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ldmtool"
MAX_LINES = 80


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body: from its first statement after the docstring to its end.

    The signature is not counted: a command's option declarations are declarations, not logic.
    """
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """'file:line name (N lines)' for every function or method under `root` whose body is longer than `limit`."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = body_lines(node)
                if n > limit:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    return offenders


def test_no_function_longer_than_80_lines():
    offenders = long_functions()
    assert not offenders, f"{len(offenders)} function(s) over {MAX_LINES} lines:\n" + "\n".join(offenders)


def test_import_layers_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
