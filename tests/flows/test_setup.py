"""Set-up is explicit: importing a flow changes nothing; calling one turns telemetry off before
Prefect creates the run (and starts its ephemeral server, which would otherwise report usage)."""

import os
import subprocess
import sys

import prefect

from tasks.runtime import QUIET_ENV


def test_importing_the_flows_and_the_cli_sets_nothing():
    code = ("import os, json; before = dict(os.environ)\n"
            "import flows.enhance, flows.index, flows.nightly, flows.search, flows.dataset, flows.cli\n"
            "print(json.dumps(sorted(k for k in os.environ if os.environ.get(k) != before.get(k))))")
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_calling_a_flow_turns_telemetry_off_before_prefect_runs_it(monkeypatch):
    from flows.search import search_batch
    from rasr.retrieval.search import SearchConfig

    seen = {}
    monkeypatch.setattr(prefect.Flow, "__call__", lambda self, *a, **k: seen.update(os.environ))
    for key in QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    search_batch(["photo.jpg"], None, SearchConfig(db="refs.lance"))
    assert {k: seen.get(k) for k in QUIET_ENV} == QUIET_ENV
