"""The realistic profile in the server: the model's sha256 journalled and reported, replay exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.hooks.risk_model import RiskModel
from engine.hooks.social_credit import SocialCredit
from engine.profiles import default_scenario_text
from engine.server import ServerThread
from loadgen.generator.workload import Workload
from tests.support.servers import StartServer, connect


def _hook(st: ServerThread, cls: type) -> object:
    return st.call(lambda: next(h for h in st.server.ledger.hooks if isinstance(h, cls)))  # type: ignore[union-attr]


def test_realistic_server_journals_its_model_and_replays_the_same_scores(
    start_server: StartServer, workload: Workload, tmp_path: Path, risk_model_cache: Path
) -> None:
    journal, trove = tmp_path / "j", str(tmp_path / "trove")
    # A low threshold flags many payments, so replay has score changes to reproduce.
    scenario = tmp_path / "low.toml"
    text = default_scenario_text()
    assert b"threshold = 0.0 " in text
    scenario.write_bytes(text.replace(b"threshold = 0.0 ", b"threshold = 0.05 "))
    st = start_server(profile="realistic", journal=str(journal), trove=trove, scenario=str(scenario))
    with connect(st, operator=2) as c:
        for i in range(8):
            c.transfer(workload.batch(400, first_id=i * 400, operator=2))
    risk = _hook(st, RiskModel)
    social = _hook(st, SocialCredit)
    assert isinstance(risk, RiskModel) and isinstance(social, SocialCredit)
    scores = st.call(lambda: social.score.copy())
    stats = st.call(lambda: st.server.stats())  # type: ignore[union-attr]
    assert (
        risk.flagged > 0
        and stats["risk_model"]["scored"] > 0
        and stats["risk_model"]["model_sha256"] == risk.predictor.sha256
    )
    assert stats["hooks"]["risk_model"]["background_ns"] > 0
    st.stop()
    # The header (the journal's first entry) names the model; a server with another one refuses to replay.
    assert risk.predictor.sha256.encode() in journal.read_bytes()[:4096]

    again = start_server(profile="realistic", journal=str(journal), trove=trove, scenario=str(scenario))
    replayed = _hook(again, SocialCredit)
    assert isinstance(replayed, SocialCredit)
    assert np.array_equal(again.call(lambda: replayed.score.copy()), scores)
