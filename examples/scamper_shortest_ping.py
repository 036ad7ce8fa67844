"""The paper's shortest-ping script, unchanged except for the import line.

Usage: python scamper_shortest_ping.py DIR IP
DIR holds a marionet controller's Unix socket (``marionet controller
--unix DIR/controller.sock …``), standing in for sc_remoted's directory.
"""
import sys
from datetime import timedelta
from marionet.compat.scamper import ScamperCtrl  # was: from scamper import ScamperCtrl

if len(sys.argv) != 3:
    print("usage: shortest-ping.py $dir $ip")
    sys.exit(-1)

ctrl = ScamperCtrl(remote_dir=sys.argv[1])
for i in ctrl.instances():
    ctrl.do_ping(sys.argv[2], inst=i)

min_rtt = None
min_vp = None
for o in ctrl.responses(timeout=timedelta(seconds=10)):
    if o.min_rtt is not None and (min_rtt is None or min_rtt > o.min_rtt):
        min_rtt = o.min_rtt
        min_vp = o.inst

if min_rtt is not None:
    print(f"{min_vp.name} {(min_rtt.total_seconds()*1000):.1f} ms")
else:
    print(f"no responses for {sys.argv[2]}")
