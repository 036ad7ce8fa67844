"""The send-gap experiment's pieces: trains on loopback, the receiver and the
native sender as real processes, and the statistics on hand-made stamps."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import pytest

from marionet.endpoint.local import native_session
from marionet.evaluate import sendgap as sg
from marionet.evaluate.samples import Sample

# ---------------------------------------------------------------- loopback


def _receiver(count: int) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen(sg.receiver_argv(0, count, 30, idle=2.0), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return p, sg.wait_ready(p)
    except BaseException:
        p.kill()
        p.wait()
        raise


def _check_complete(train: sg.Train, count: int) -> None:
    """Every send stamped by the kernel, never before its time, in order; all received."""
    assert train.count == count and train.errors == 0 and train.missing == 0 and train.user_stamps == 0
    assert all(t is not None for t in train.tx_ns)
    assert all(t >= a for a, t in zip(train.at, train.tx_ns)), "a send left before its scheduled time"
    assert train.tx_ns == sorted(train.tx_ns)
    assert sorted(train.rx_seq) == list(range(count))
    st, rt = sg.tx_stats(train), sg.rx_stats(train)
    assert st.n == rt.n == count - 1 and st.lost == rt.lost == 0
    assert all(g > 0 for g in sg.sender_gaps(train))


@pytest.mark.parametrize("spacing_ns", [100_000, 10_000])
def test_marionet_train_native_session_loopback(spacing_ns: int) -> None:
    count = 300
    rp, port = _receiver(count)
    try:
        async def go() -> sg.Train:
            async with native_session() as io:
                train = await sg.marionet_train(io, "127.0.0.1", port, count=count, spacing_ns=spacing_ns,
                                                start_delay_ns=100_000_000)
                assert io.sockets == {}, "the train's socket was left open"
                return train
        train = asyncio.run(go())
    finally:
        report = sg.read_report(rp)
    assert train.sender == "marionet" and train.spacing_ns == spacing_ns
    train.with_receiver(report)
    _check_complete(train, count)
    samples = sg.train_samples(train, vp="lo", source="native", run=3)
    tx = [s for s in samples if s.experiment == sg.EXPERIMENT_TX]
    rx = [s for s in samples if s.experiment == sg.EXPERIMENT_RX]
    assert len(tx) == len(rx) == count - 1
    assert {(s.vp, s.source, s.run, s.metric, s.param) for s in samples} == \
        {("lo", "native", 3, "gap_us", sg.spacing_param(spacing_ns))}
    assert [s.value for s in tx] == [g / 1000 for g in sg.sender_gaps(train)]


def test_native_sender_and_receiver_processes() -> None:
    count = 300
    rp, port = _receiver(count)
    try:
        sp = subprocess.run(sg.native_send_argv("127.0.0.1", port, count, 10_000, start_delay_ns=50_000_000),
                            capture_output=True, text=True, timeout=60)
    finally:
        report = sg.read_report(rp)
    assert sp.returncode == 0, sp.stderr
    lines = sp.stdout.strip().splitlines()
    assert len(lines) == 1
    train = sg.Train.from_dict(__import__("json").loads(lines[0])).with_receiver(report)
    assert train.sender == "native-sender" and train.extra["keyed"] in (True, False)
    _check_complete(train, count)
    assert report["foreign"] == 0 and report["port"] == port


def test_receiver_counts_foreign_datagrams_and_stops_when_idle() -> None:
    import socket

    rp, port = _receiver(10)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for seq in (0, 2, 1, 1):
            s.sendto(sg.payload(seq), ("127.0.0.1", port))
        s.sendto(b"not a train packet", ("127.0.0.1", port))
    report = sg.read_report(rp, timeout=20)  # idle 2 s ends it long before the 30 s timeout
    assert report["seq"] == [0, 2, 1, 1] and report["foreign"] == 1 and len(report["rx_ns"]) == 4
    train = sg.Train("x", 10, 1000, at=[0] * 10, tx_ns=[None] * 10).with_receiver(report)
    st = sg.rx_stats(train)
    assert st.lost == 7 and st.reordered == 2 and st.n == 2


# ------------------------------------------------------------- statistics


def _train(tx: list[int | None], spacing: int = 10_000, rx_seq=None, rx_ns=None) -> sg.Train:
    return sg.Train("t", len(tx), spacing, at=[i * spacing for i in range(len(tx))], tx_ns=tx,
                    rx_seq=rx_seq, rx_ns=rx_ns)


def test_sender_gap_statistics_by_hand() -> None:
    # gaps 10, 12, 8, 10 µs (spacing 10 µs): errors 0, 2, 2, 0
    t = _train([1_000_000, 1_010_000, 1_022_000, 1_030_000, 1_040_000])
    assert sg.sender_gaps(t) == [10_000, 12_000, 8_000, 10_000]
    st = sg.tx_stats(t)
    assert st.n == 4 and st.median_us == 10.0 and st.mean_us == 10.0
    assert st.sd_us == pytest.approx(math.sqrt(8 / 3))  # squares 0,4,4,0 over n-1
    assert st.p99_err_us == 2.0 and st.median_err_us == 1.0 and st.lost == 0


def test_sender_gaps_skip_missing_stamps() -> None:
    t = _train([0, 10_000, None, 31_000, 40_500])
    assert sg.sender_gaps(t) == [10_000, 9_500]
    st = sg.tx_stats(t)
    assert st.lost == 1 and st.median_us == 9.75 and st.p99_err_us == 0.5
    assert sg.schedule_errors(t) == [0, 0, 1_000, 500]


def test_p99_is_nearest_rank() -> None:
    gaps = [10_000 + i for i in range(200)]  # errors 0..199 ns
    st = sg.gap_stats(gaps, 10_000)
    assert st.p99_err_us == 0.197  # ceil(0.99 * 200) = 198th smallest = 197 ns
    assert math.isnan(sg.gap_stats([], 10_000).median_us)


def test_receiver_gaps_by_sequence_with_loss_reorder_and_duplicate() -> None:
    # arrival order 0, 2, 1, 1(dup), 4; 3 lost
    t = _train([None] * 5, rx_seq=[0, 2, 1, 1, 4], rx_ns=[100, 300, 250, 999, 500])
    assert sg.receiver_gaps(t) == [150, 50]  # (0,1) and (1,2); (2,3), (3,4) miss 3
    assert sg.reordered_count(t.rx_seq) == 2  # the 1 and its duplicate arrive after 2
    st = sg.rx_stats(t)
    assert st.lost == 1 and st.reordered == 2 and st.n == 2
    assert sg.reordered_count([0, 1, 2]) == 0 and sg.reordered_count([3, 0, 1, 2]) == 3


def test_train_samples_shape_and_values() -> None:
    t = _train([0, 7_300, 14_700], spacing=7_300, rx_seq=[1, 0, 2], rx_ns=[5_000_010, 5_000_000, 5_014_600])
    out = sg.train_samples(t, vp="vp-a", source="remote", run=7)
    assert out == [
        Sample("send-gap", "vp-a", "remote", 7, "gap_us", 7.3, param="7.3us", time_ns=7_300),
        Sample("send-gap", "vp-a", "remote", 7, "gap_us", 7.4, param="7.3us", time_ns=14_700),
        Sample("send-gap-rx", "vp-a", "remote", 7, "gap_us", 0.01, param="7.3us", time_ns=5_000_010),
        Sample("send-gap-rx", "vp-a", "remote", 7, "gap_us", 14.59, param="7.3us", time_ns=5_014_600),
    ]
    assert [sg.spacing_param(s) for s in sg.SPACINGS_NS] == ["100us", "20us", "10us", "7.3us", "5us"]
    with pytest.raises(ValueError, match="receiver report"):
        sg.rx_stats(_train([0, 1]))


def test_train_round_trips_through_json() -> None:
    import json

    t = _train([0, None, 20_000], rx_seq=[0, 2], rx_ns=[1, 2])
    t.extra["k"] = 1
    assert sg.Train.from_dict(json.loads(json.dumps(t.to_dict()))) == t


# ---------------------------------------------------------- bad parameters


@pytest.mark.parametrize("kw, match", [
    ({"spacing_ns": 0}, "spacing_ns"),
    ({"spacing_ns": 7.3}, "spacing_ns"),
    ({"count": sg.MAX_COUNT + 1}, "count"),
    ({"count": 1}, "count"),
    ({"dst": "not-an-address"}, "dst"),
    ({"dst": "10.0.0.300"}, "dst"),
    ({"port": 0}, "port"),
    ({"start_delay_ns": -1}, "start_delay_ns"),
    ({"size": 4}, "size"),
    ({"count": 10_000, "spacing_ns": 100_000_000}, "lasts more than"),
])
def test_bad_parameters_are_value_errors(kw: dict, match: str) -> None:
    args = {"dst": "127.0.0.1", "port": 9, "count": 10, "spacing_ns": 10_000, "start_delay_ns": 0, **kw}
    with pytest.raises(ValueError, match=match):
        sg.check_train(**args)
    with pytest.raises(ValueError, match=match):
        sg.native_train(args.pop("dst"), args.pop("port"), **args)


def test_marionet_train_refuses_bad_parameters_before_opening_a_socket() -> None:
    async def go() -> None:
        async with native_session() as io:
            for kw in ({"count": 10, "spacing_ns": 0}, {"count": 10**6, "spacing_ns": 10_000}):
                with pytest.raises(ValueError):
                    await sg.marionet_train(io, "127.0.0.1", 9, start_delay_ns=0, **kw)
            with pytest.raises(ValueError, match="dst"):
                await sg.marionet_train(io, "example.org", 9, count=10, spacing_ns=10_000)
            assert io.sockets == {}
    asyncio.run(go())


def test_receiver_bad_parameters() -> None:
    for args in ((70000, 10, 1.0), (0, 0, 1.0), (0, 10, 0)):
        with pytest.raises(ValueError):
            sg.receive(*args)
    cp = subprocess.run([sys.executable, "-m", "marionet.evaluate.sendgap", "native-send", "127.0.0.1",
                         "9", "10", "0"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 2 and "spacing_ns" in cp.stderr and cp.stdout == ""
