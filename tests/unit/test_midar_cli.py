"""``marionet midar``: the simulated run end to end, and bad targets."""

from __future__ import annotations

import json
from pathlib import Path

from marionet.cli import main


def test_midar_cli_simulated_run_writes_sets_and_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["midar", "--simulate", "40", "--out", str(tmp_path)]) == 0
    sets = [ln for ln in (tmp_path / "midar.sets").read_text().splitlines() if not ln.startswith("#")]
    d = json.loads((tmp_path / "midar.json").read_text())
    assert sets and len(sets) == len(d["alias_sets"])
    assert "precision 1.0000" in capsys.readouterr().out


def test_midar_cli_bad_targets(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "t.txt"
    f.write_text("10.0.0.1\n2001:db8::1\n")
    assert main(["midar", "--targets", str(f), "--vps", "a", "--out", str(tmp_path)]) == 2
    assert "IPv6" in capsys.readouterr().err
    assert main(["midar", "--out", str(tmp_path)]) == 2


def test_midar_cli_lab_arguments_are_checked_before_any_lab_is_built(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from marionet.commands.common import CliError
    from marionet.commands.midar import lab_spec

    spec = lab_spec("alias:20", ["vp2=50", "vp3=-30"])
    assert spec.nodes["vp2"].clock_skew_ms == 50.0 and spec.nodes["vp3"].clock_skew_ms == -30.0
    for arg, skews, needle in (("alias:x", [], "alias:N"), ("alias:20", ["vp2"], "VP=MS"),
                               ("alias:20", ["vp9=5"], "no VP 'vp9'"), ("alias:0", [], "n_routers"),
                               (str(tmp_path / "none.toml"), [], "none.toml"),
                               (str(tmp_path / "none.toml"), ["vp1=1"], "--skew applies")):
        try:
            lab_spec(arg, skews)
        except CliError as e:
            assert needle in str(e), (arg, str(e))
        else:
            raise AssertionError(f"{arg} {skews}: no error")
    assert main(["midar", "--lab", "alias:x", "--out", str(tmp_path)]) == 2
    assert "alias:N" in capsys.readouterr().err
