"""Ray stays at the edges: the math packages import without Ray (docs/architecture.md, section 1)."""

import subprocess
import sys

MATH_MODULES = ["raytopo.topology", "raytopo.diffusion", "raytopo.models.adm", "raytopo.families.tdn",
                "raytopo.eval.topology_metrics"]


def test_math_modules_do_not_import_ray():
    code = (
        "import importlib, sys\n"
        f"for name in {MATH_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'ray' in sys.modules:\n"
        "        sys.exit(name + ' imported ray')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
