"""``scripts/chaos_train.py`` in the suite: 5 SIGKILLs at random moments (some aimed at a
checkpoint write in progress), a resume after each, no damaged checkpoint, and a final state
bit-identical to a straight run. (The README's figures come from ``--kills 100`` on the
default config.)"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_five_kills_lose_nothing(tmp_path):
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chaos_train.py"), "--kills", "5",
         "--window", "4", "--during-writes", "0.4", "--seed", "3",
         "--workdir", str(tmp_path / "runs"), "--out", str(out),
         "--set", "train.num_steps=2000", "model.hidden=32", "data.batch_size=64",
         "train.steps_per_dispatch=50", "train.checkpoint_every=100"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["kills"] == 5 and len(result["kill_log"]) == 5
    assert result["damaged_checkpoints"] == [] and result["bit_identical"]
    assert all(k["exit_codes"] == [-9] for k in result["kill_log"])
    assert result["final_exit_codes"] == [0]
