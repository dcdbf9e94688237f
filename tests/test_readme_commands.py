"""CI runs exactly the README's quick-start commands, and the install script installs what the tests need."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip()]


def test_ci_runs_exactly_the_readme_commands():
    commands = _quick_start()
    assert commands[0].startswith("bash scripts/install.sh") and "pytest" in commands[-1]
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    # The README's lines, verbatim and in order, are the last things CI runs; before them only setup.
    assert ci[-len(commands):] == commands
    assert not any("apt-get" in ln or "pip " in ln for ln in ci), "installing belongs in scripts/install.sh"


def test_install_script_installs_chromium_where_it_can_and_says_how_where_it_cannot(tmp_path):
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert "apt-get install" in script and "chromium" in script
    # Run only the Chromium part, as a user who is not root and has no chromium: it must explain, not fail.
    part = script[script.index("# Chromium for the browser tests"):script.index("\nfi\n") + 4]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake / "id").chmod(0o755)
    r = subprocess.run(["bash", "-c", part.replace("[ -x /usr/bin/chromium ]", "false")], capture_output=True,
                       text=True, env={"PATH": f"{fake}:/usr/bin:/bin"}, check=False)
    assert r.returncode == 0 and "sudo apt-get install -y --no-install-recommends chromium" in r.stdout
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "install.sh")], check=False).returncode == 0
