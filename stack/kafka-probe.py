"""Readiness probes of the stack's Kafka cluster, on plain sockets (no client library needed).

    python3 stack/kafka-probe.py brokers HOST:PORT      -> {"brokers": [1, 2, 3]}
    python3 stack/kafka-probe.py quorum HOST:PORT[,...] -> {"leader": 2, "epoch": 5, ...}

``brokers``: the brokers a Metadata request lists (KRaft lists registered, unfenced brokers only).
``quorum``: DescribeQuorum sent to a controller listener: the Raft leader of the metadata log, its
high watermark, and per voter its log end offset and how long ago it was last caught up (by the
leader's clock). Used by stack/kafka-cluster.sh's wait and by the cluster's integration tests.
Exit status 1 with the reason on stderr when the server does not answer as asked.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time


def recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return buf


def call(sock: socket.socket, api_key: int, version: int, body: bytes, flexible: bool) -> bytes:
    """One request; the response without its header (v0 header, or v1 with empty tags)."""
    client = b"stack-probe"
    header = struct.pack(">hhih", api_key, version, 7, len(client)) + client
    if flexible:
        header += b"\x00"  # request header v2: no tagged fields
    req = header + body
    sock.sendall(struct.pack(">i", len(req)) + req)
    size = struct.unpack(">i", recv(sock, 4))[0]
    resp = recv(sock, size)
    return resp[5:] if flexible else resp[4:]


def api_versions(sock: socket.socket) -> dict[int, tuple[int, int]]:
    # ApiVersions v0: every broker and controller answers it.
    r = call(sock, 18, 0, b"", flexible=False)
    _, n = struct.unpack(">hi", r[:6])
    return {
        k: (lo, hi)
        for k, lo, hi in (struct.unpack(">hhh", r[6 + 6 * i : 12 + 6 * i]) for i in range(n))
    }


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=3)


def brokers(address: str) -> list[int]:
    with connect(address) as s:
        lo, hi = api_versions(s)[3]
        v = min(hi, 8)  # v9+ is the flexible encoding; 1..8 parse alike up to the broker list
        if v < max(lo, 1):
            raise SystemExit("no usable Metadata version")
        body = struct.pack(">i", 0)  # no topics, only the brokers
        if v >= 4:
            body += b"\x00"  # allow_auto_topic_creation
        if v >= 8:
            body += b"\x00\x00"
        r = call(s, 3, v, body, flexible=False)
    off = 4 if v >= 3 else 0  # throttle_time_ms
    (n,) = struct.unpack(">i", r[off : off + 4])
    off += 4
    ids = []
    for _ in range(n):
        node_id, hlen = struct.unpack(">ih", r[off : off + 6])
        off += 6 + hlen + 4  # host, port
        (rlen,) = struct.unpack(">h", r[off : off + 2])  # rack (nullable)
        off += 2 + max(rlen, 0)
        ids.append(node_id)
    return sorted(ids)


class Reader:
    """The compact (flexible-version) encoding: unsigned varints, compact arrays and strings."""

    def __init__(self, data: bytes):
        self.data, self.off = data, 0

    def fixed(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.off)
        self.off += struct.calcsize(fmt)
        return int(value)

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.data[self.off]
            self.off += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def string(self) -> str:
        n = self.uvarint() - 1
        text = self.data[self.off : self.off + max(n, 0)].decode()
        self.off += max(n, 0)
        return text

    def tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.off += self.uvarint()


def replicas(r: Reader, now_ms: int) -> dict[int, dict[str, int]]:
    """A DescribeQuorum v1 ReplicaState array: id -> log end offset, ms since caught up."""
    out = {}
    for _ in range(r.uvarint() - 1):
        rid, leo = r.fixed(">i"), r.fixed(">q")
        r.fixed(">q")  # last fetch timestamp
        caught_up = r.fixed(">q")
        r.tags()
        out[rid] = {
            "log_end_offset": leo,
            "caught_up_ms_ago": now_ms - caught_up if caught_up >= 0 else -1,
        }
    return out


def quorum(addresses: str) -> dict[str, object]:
    """DescribeQuorum v1 of the metadata log, from the controller that leads it."""
    failures = []
    for address in addresses.split(","):
        try:
            with connect(address) as s:
                lo, hi = api_versions(s).get(55, (0, -1))
                if not lo <= 1 <= hi:
                    raise SystemExit(f"{address}: DescribeQuorum v1 unsupported ({lo}..{hi})")
                topic = b"__cluster_metadata"
                # topics[1]: name, partitions[1]: index 0; each struct ends with empty tags.
                body = b"\x02" + bytes([len(topic) + 1]) + topic + b"\x02" + struct.pack(">i", 0)
                body += b"\x00\x00\x00"
                r = Reader(call(s, 55, 1, body, flexible=True))
                now_ms = int(time.time() * 1000)
        except OSError as exc:
            failures.append(f"{address}: {exc}")
            continue
        if (error := r.fixed(">h")) != 0:
            failures.append(f"{address}: error code {error}")
            continue
        r.uvarint()  # one topic
        r.string()
        r.uvarint()  # one partition
        r.fixed(">i")
        if (error := r.fixed(">h")) != 0:
            # 6, NOT_LEADER_OR_FOLLOWER: only the quorum's leader describes it; ask the next.
            failures.append(f"{address}: error code {error}")
            continue
        leader, epoch, high_watermark = r.fixed(">i"), r.fixed(">i"), r.fixed(">q")
        voters = replicas(r, now_ms)
        observers = replicas(r, now_ms)
        return {
            "answered_by": address,
            "leader": leader,
            "epoch": epoch,
            "high_watermark": high_watermark,
            "voters": voters,
            "observers": observers,
        }
    raise SystemExit("no controller answered: " + "; ".join(failures))


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("brokers", "quorum"):
        raise SystemExit(f"usage: {sys.argv[0]} brokers HOST:PORT | quorum HOST:PORT[,...]")
    if sys.argv[1] == "brokers":
        try:
            print(json.dumps({"brokers": brokers(sys.argv[2])}))
        except OSError as exc:
            raise SystemExit(f"{sys.argv[2]}: {exc}") from None
    else:
        print(json.dumps(quorum(sys.argv[2])))


if __name__ == "__main__":
    main()
