"""Re-measure the error model of a shipped profile with `mixcache calibrate`'s defaults.

    python scripts/refresh_shipped_errors.py bundled-wan src/mixcache/profiles/wan.json
    python scripts/refresh_shipped_errors.py bundled-hunyuan \
        src/mixcache/profiles/hunyuan_video.json

Runs `mixcache calibrate MODEL --out <tmp>` (4 tuning prompts, seed 0, 50 steps, CFG 5; and
the short runs of 10 steps that measure the size exponent) and replaces the profile's ``errors``
with what it measured; the rest of the profile (the noise calibration's impacts and time
weights, which the step-by-step price uses) is kept. A third argument names the output of such a
`mixcache calibrate` run to take instead of running it again (the calibration is deterministic).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def main(model: str, shipped: str, measured: str | None = None) -> None:
    if measured is not None:
        errors = json.loads(Path(measured).read_text())["errors"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "profile.json"
            subprocess.run(["mixcache", "calibrate", model, "--out", str(out)], check=True)
            errors = json.loads(out.read_text())["errors"]
    path = Path(shipped)
    profile = json.loads(path.read_text())
    profile["errors"] = errors
    total = re.search(r"(\d+) generations", errors["notes"])
    short = re.search(r"and (\d+) of (\d+) steps", errors["notes"])
    worth = re.search(r"([\d.]+) generations' worth", errors["notes"])
    prompts = re.search(r"(\d+) prompt\(s\)", errors["notes"])
    head = profile["notes"].split("; errors: ")[0]
    profile["notes"] = (
        f"{head}; errors: `mixcache calibrate {model}` defaults (calibrate_errors: "
        f"{prompts.group(1) if prompts else '?'} tuning prompts, seed 0, 50 steps, CFG 5, "
        f"{total.group(1) if total else '?'} generations"
        + (f" and {short.group(1)} runs of {short.group(2)} steps" if short else "")
        + (f", {worth.group(1)} generations' worth" if worth else "")
        + ")"
    )
    path.write_text(json.dumps(profile, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
