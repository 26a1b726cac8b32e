# Issue 9's benchmark: collectors flooding beyond what the agent can ingest,
# with alerts on the alert lane (or, with --bulk, on the bulk socket like a
# collector that knows no lane).
#
#   python bench/flood.py            # ~40 s: critical events on the lane
#   python bench/flood.py --bulk     # the same with critical on the bulk socket
#
# Scenario (issue 9): 4 loadgen processes with one PUSH socket each send
# 120-byte single-event frames as fast as they can for 8 s (1% critical, 4%
# high, 70% normal, 25% low), after 1 s at 1,000/s and followed by 12 s at
# 1,000/s; the subscriber (RCVHWM 4, SO_RCVBUF 4 KiB) reads at most 30,000
# events/s during the flood and at full speed after it. Targets: critical p99
# <= 10 ms and max <= 50 ms, 0 lost and 0 duplicated in every class, the
# backlog drained within 5 s of the flood's end.
#
# It is bench/brownout.py with these parameters (every brownout option can be
# given after them to change one), so the output reads the same way; the
# latency table adds the part of each alert's time spent inside the agent.

from __future__ import annotations

import sys

import brownout

FLOOD = [
    "--name", "flood",
    "--pre-seconds", "1", "--pre-rate", "1000",
    "--spike-seconds", "8", "--spike-rate", "max",
    "--post-seconds", "12", "--post-rate", "1000",
    "--rss-after", "10",
    "--sub-limit", "30000",
    "--generators", "4", "--connections", "1",
    "--target-p99-ms", "10", "--target-max-ms", "50",
]  # fmt: skip


def main(argv: list[str]) -> int:
    bulk = "--bulk" in argv
    rest = [a for a in argv if a != "--bulk"]
    lane = [] if bulk else ["--lane"]
    name = ["--name", "flood-bulk"] if bulk else []
    return brownout.main(FLOOD + lane + name + rest, description="issue 9: the flood")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
