"""The committed seed corpora, replayed in the ordinary test run (no atheris needed): every seed
of every target runs without a finding, and the seeds still reach what they were made for."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.constants import ExchangeType
from tests.fuzz import ike_support
from tests.fuzz.runner import TARGETS, corpus_inputs, load, quiet_logs
from tests.ike.peers import I_ADDR, R_ADDR


@pytest.mark.parametrize("target", TARGETS)
def test_seed_corpus_runs_clean(target: str) -> None:
    quiet_logs()
    inputs = list(corpus_inputs(target))
    assert inputs, f"tests/fuzz/corpus/{target} is empty: python -m tests.fuzz.make_corpus {target}"
    one_input = load(target).make()
    for _, data in inputs:
        one_input(data)


@pytest.mark.parametrize("cert", [False, True])
def test_auth_seeds_authenticate_in_a_fresh_process_state(cert: bool) -> None:
    """The IKE_AUTH seeds carry a real AUTH (deterministic keys and PKI): sealed with the SA's keys
    they establish the SA, so mutations start from inside the AUTH logic."""
    prefix = "cert" if cert else "psk"
    seeds = [data for path, data in corpus_inputs("ike_auth") if path.name.startswith(prefix)]
    assert seeds
    p = ike_support.new_pair(cert)
    ike_support.through_init(p)
    request = ike_support.seal(p.initiator, ExchangeType.IKE_AUTH, 1, False, seeds[0][1:])
    p.table.receive(request, R_ADDR, I_ADDR, p.now)
    assert p.responder.established
