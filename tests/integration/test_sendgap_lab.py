"""The send-gap trains across a lab link: a marionet train driven remotely
through the lab's controller, and the native sender run in the VP's
namespace, both reach a receiver on the far host with every packet, and both
report one kernel TX stamp per packet. (Timing is bench/send_gap.py's job.)"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any, Iterator

import pytest

from marionet.evaluate import sendgap as sg
from marionet.lab.pytest_plugin import make_lab
from marionet.lab import vp_and_sink

pytestmark = pytest.mark.root


COUNT = 200
SPACING_NS = 20_000


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(vp_and_sink()) as lab:
        yield lab


def _receiver(lab: Any) -> tuple[subprocess.Popen, int]:
    p = lab.popen("sink", sg.receiver_argv(0, COUNT, 30, idle=2.0), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return p, sg.wait_ready(p)
    except BaseException:
        p.kill()
        p.wait()
        raise


def _check(train: sg.Train, report: dict) -> None:
    train.with_receiver(report)
    assert train.errors == 0 and train.missing == 0 and train.user_stamps == 0, train.extra
    assert len(train.tx_ns) == COUNT and all(t is not None for t in train.tx_ns)
    assert sorted(train.rx_seq) == list(range(COUNT)) and report["foreign"] == report["user_stamps"] == 0
    assert sg.tx_stats(train).n == sg.rx_stats(train).n == COUNT - 1
    assert len(sg.train_samples(train, vp="vp-a", source=train.sender, run=0)) == 2 * (COUNT - 1)


def test_remote_marionet_train_through_the_controller(lab: Any) -> None:
    rp, port = _receiver(lab)
    dst = lab.addr("sink")

    async def go() -> sg.Train:
        conn = await lab.aconnect()
        try:
            s = await conn.attach("vp-a")
            try:
                return await sg.marionet_train(s, dst, port, count=COUNT, spacing_ns=SPACING_NS,
                                               start_delay_ns=300_000_000)
            finally:
                await s.close()
        finally:
            await conn.close()
    try:
        train = asyncio.run(go())
    finally:
        report = sg.read_report(rp)
    assert train.sender == "marionet"
    _check(train, report)


def test_native_sender_in_the_vp_namespace(lab: Any) -> None:
    rp, port = _receiver(lab)
    try:
        sp = lab.popen("vp-a", sg.native_send_argv(lab.addr("sink"), port, COUNT, SPACING_NS),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        train = sg.Train.from_dict(sg.read_report(sp))
    finally:
        report = sg.read_report(rp)
    assert train.sender == "native-sender"
    _check(train, report)


def test_marionet_native_placement_in_the_vp_namespace(lab: Any) -> None:
    rp, port = _receiver(lab)
    try:
        sp = lab.popen("vp-a", sg.marionet_send_argv(lab.addr("sink"), port, COUNT, SPACING_NS),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        train = sg.Train.from_dict(sg.read_report(sp))
    finally:
        report = sg.read_report(rp)
    assert train.sender == "marionet"
    _check(train, report)
