"""The scenario's ``[workload]`` reaches every command that generates payments (issue 16).

``engine`` builds its workload with ``scenario_workload``; ``run``, ``load`` and ``compare`` carry
the same settings to their gateways in ``LoadConfig.workload``. Checked here at the gateway: what a
gateway sends for a scenario with non-default persons and behaviour rates follows that scenario
(people at home in its cities, its behaviours at its rates, labelled by (seed, transfer id) in
every pass of the replayed pool), and its planted payments are the ones ``engine`` generates for
the same scenario.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine import wire
from engine.behaviours import Behaviour, labels
from engine.categories import Category
from engine.persons import Persons
from engine.profiles import load_scenario
from loadgen.cli.common_args import load_config
from loadgen.cli.main import build_parser
from loadgen.generator.gateway import Gateway, LoadConfig
from loadgen.generator.workload import BatchPool, ScenarioWorkload, Workload, scenario_workload
from tests.engine.test_persons import sampling_bound
from tests.support.servers import scenario_with_slo

ACCOUNTS = 20_000
MS = 1_000_000
#: Non-default [workload] settings: few cities, and gambling 20x the default rate in smaller slots.
EDITS = (
    ("cities = 4096", "cities = 64"),
    ("slot_payments = 1024 ", "slot_payments = 128 "),
    ("gambling = { rate = 0.0005, payments = 5 }", "gambling = { rate = 0.01, payments = 5 }"),
)


def _scenario(tmp_path: Path) -> str:
    return scenario_with_slo(tmp_path, "20.0", edits=EDITS)


def _sent(config: LoadConfig, accounts: int = ACCOUNTS) -> tuple[Gateway, np.ndarray]:
    """Everything one gateway (operator 1) sends over its whole schedule: three passes of its pool."""
    g = Gateway(1, config, config.new_measurement(), wire.Codec())
    g.prepare(accounts)
    frames: list[np.ndarray] = []
    reader, decode = wire.FrameReader(), wire.Codec().client_decoder.decode

    class Transport:
        def write(self, data: bytes) -> None:
            frames.extend(wire.records_from_bytes(decode(body).transfers) for body in reader.feed(data))

        def get_write_buffer_size(self) -> int:
            return 0

    g.transport = Transport()  # type: ignore[assignment]
    for now in range(0, 2_100 * MS, 10 * MS):
        g.send_due(now)
    return g, np.concatenate(frames)


def _load_config(scenario: str, **fields: Any) -> LoadConfig:
    settings = {"rate_tps": 12_000, "seconds": 2.0, "warmup": 0.0, "operators": 2, "pool": 4_000, "batch_max": 500}
    config = LoadConfig(workload=ScenarioWorkload.of(load_scenario(scenario)), **settings)  # type: ignore[arg-type]
    return msgspec.structs.replace(config, **fields)


def test_run_and_load_carry_the_scenarios_workload_and_the_result_records_it(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path)
    expected = ScenarioWorkload.of(load_scenario(scenario))
    assert expected != ScenarioWorkload() and expected.behaviours.gambling.rate == 0.01
    configs = []
    for command in (["run"], ["load", "--target", "127.0.0.1:1"]):
        args = build_parser().parse_args([*command, "--scenario", scenario])
        configs.append(load_config(args, host="127.0.0.1", port=1))
    assert configs[0].workload == configs[1].workload == expected
    # The load config travels to gateway processes and into the result file intact.
    assert msgspec.json.decode(msgspec.json.encode(configs[0]), type=LoadConfig) == configs[0]
    # A result file written before the field existed reads as the defaults: what its gateways ran.
    old = msgspec.json.encode(configs[0]).replace(b',"workload":' + msgspec.json.encode(expected), b"")
    assert msgspec.json.decode(old, type=LoadConfig).workload == ScenarioWorkload()
    # The gateway generates exactly the workload ``engine`` builds for the scenario.
    g = Gateway(0, configs[0], configs[0].new_measurement(), wire.Codec())
    assert g.workload_config(ACCOUNTS) == scenario_workload(
        load_scenario(scenario), accounts=ACCOUNTS, seed=configs[0].seed
    )


def test_a_gateway_sends_the_scenarios_people_and_behaviours_labelled_in_every_pass(tmp_path: Path) -> None:
    config = _load_config(_scenario(tmp_path))
    g, sent = _sent(config)
    assert len(sent) == len(g.schedule) == 12_000 and g.config.pool * 3 == len(sent)
    c = g.workload_config(ACCOUNTS)
    label = labels(c.behaviours, c.seed, sent["transfer_id"])
    gambling = label == Behaviour.GAMBLING
    # Labels are the truth in every pass: gambling rows are exactly the labelled ones, each pass.
    assert ((sent["category"] == Category.GAMBLING) == gambling).all()
    for p in range(3):
        assert gambling[p * 4_000 : (p + 1) * 4_000].any()
    share = gambling.mean()
    slots = len(sent) / c.behaviours.slot_payments
    p_slot = c.behaviours.gambling.rate * c.behaviours.slot_payments / c.behaviours.gambling.payments
    bound = c.behaviours.gambling.payments * (5 * np.sqrt(slots * p_slot * (1 - p_slot)) + 2) / len(sent)
    assert abs(share - c.behaviours.gambling.rate) <= bound
    # The scenario's people: ordinary payments of the forward passes (0 and 2; pass 1 swaps payer
    # and payee) are at home or work, in the scenario's 64 cities, at the configured share.
    forward = np.r_[0:4_000, 8_000:12_000]
    ordinary = sent[forward][label[forward] == 0]

    def in_area(persons: Persons) -> float:
        home, work = persons.home_and_work(ordinary["payer"])
        cell = ordinary["location_cell"]
        apart = np.minimum(persons.cells_apart(cell, home), persons.cells_apart(cell, work))
        return float((apart <= c.persons.near_cells).mean())

    expected = c.persons.home_share + c.persons.work_share
    assert abs(in_area(Persons(c.persons, seed=c.seed)) - expected) <= sampling_bound(expected, len(ordinary))
    assert in_area(Persons(seed=c.seed)) < expected / 4  # the shipped people live elsewhere


def test_planted_payments_are_the_ones_engine_generates_for_the_scenario(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path)
    g, sent = _sent(_load_config(scenario))
    c = g.workload_config(ACCOUNTS)
    engine = BatchPool(Workload(scenario_workload(load_scenario(scenario), accounts=ACCOUNTS, seed=c.seed)), 4, 1_000)
    generated = np.concatenate([engine.next() for _ in range(12)])  # the same ids, three passes

    def planted(records: np.ndarray) -> np.ndarray:
        """The planted payments by id (a duplicate that re-sends a planted id carries the same one)."""
        rows = records[labels(c.behaviours, c.seed, records["transfer_id"]) != 0]
        return rows[np.unique(rows["transfer_id"], return_index=True)[1]]

    planted_sent, planted_engine = planted(sent), planted(generated)
    assert len(planted_sent) > 100
    for field in ("transfer_id", "payer", "payee", "amount_fen", "category", "device_id", "location_cell"):
        np.testing.assert_array_equal(planted_sent[field], planted_engine[field], err_msg=field)
    # And the shipped scenario plants other payments under the same ids.
    _, default_sent = _sent(_load_config(scenario, workload=ScenarioWorkload()))
    default_gambling = (default_sent["category"] == Category.GAMBLING).sum()
    assert default_gambling < (planted_sent["category"] == Category.GAMBLING).sum() / 4
