"""Message types of the marionet wire protocol.

Each message is a msgspec ``Struct`` encoded as a msgpack array whose first
element is the message's tag, so the structs double as the wire schema and
an unknown tag fails decoding instead of being misread.

Requests carry an ``id`` chosen by the sender; the reply carries the same id,
so replies and notifications interleave freely (PacketLab answers strictly
in order and has no ids). Times are integers: nanoseconds since the Unix
epoch on the endpoint's CLOCK_REALTIME, each with a ``ts_source`` saying
whether the kernel or user space took it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

#: 2: ``Hello.nonce``, ``Auth`` (the client proves its certificate chain to
#: the endpoint itself, also through a controller) and ``ChFlow``.
PROTOCOL_VERSION = 2

TsSource = Literal["kernel", "user"]


class Message(msgspec.Struct, array_like=True, tag_field="t", omit_defaults=False):
    """Base of every message on the wire."""


# --------------------------------------------------------------------------
# Session set-up
# --------------------------------------------------------------------------


class Hello(Message, tag="hello"):
    """First message in each direction; the versions must match."""

    id: int
    version: int
    role: str  # "client", "endpoint", "controller"
    name: str = ""
    features: list[str] = []
    #: An endpoint's reply carries a fresh random nonce: the client signs it
    #: in ``Auth`` to prove it holds the key of the chain it presents.
    nonce: bytes = b""


# --------------------------------------------------------------------------
# Requests (client -> endpoint)
# --------------------------------------------------------------------------


class Request(Message):
    """A request; its reply carries the same ``id``."""

    kind: ClassVar[str] = "request"


class Info(Request, tag="info"):
    id: int


class Auth(Request, tag="auth"):
    """Client -> endpoint, right after hello: the client's certificate chain
    (DER, leaf first) and its Ed25519 signature over the hello's nonce
    bound to the VP name (``marionet.guard.chain.auth_message``).

    Why in the session and not only in TLS: through a controller the
    endpoint never sees the client's TLS handshake, and must not take the
    controller's word for who the client is. ``monitors`` are WebAssembly
    modules the client supplies for monitors its certificate mandates.
    The reply is ``Ok`` with the identity and grants in plain words."""

    id: int
    chain: list[bytes]
    signature: bytes
    monitors: list[bytes] = []


class NOpen(Request, tag="nopen"):
    """Open a socket on the endpoint.

    ``proto`` is "udp", "tcp" (connect to ``raddr``/``rport``), "tcp-listen"
    or "raw" (IP protocol number in ``ipproto``; ``hdrincl`` for IPv4
    full-header mode, where the caller writes the IP header).
    """

    id: int
    proto: str
    family: int = 4
    ipproto: int | None = None
    hdrincl: bool = False
    laddr: str | None = None
    lport: int = 0
    raddr: str | None = None
    rport: int | None = None
    ttl: int | None = None
    tos: int | None = None
    device: str | None = None
    backlog: int = 16
    timeout_ns: int | None = None
    nodelay: bool = False  # TCP_NODELAY (accepted connections inherit it)


class NClose(Request, tag="nclose"):
    id: int
    sock: int


class SendItem(msgspec.Struct, array_like=True):
    """One send of a batch (see ``NSendV``); fields as in ``NSend``."""

    sock: int
    data: bytes
    dst: str | None = None
    port: int | None = None
    at: int | None = None
    tag: int | None = None
    ttl: int | None = None
    tos: int | None = None
    df: bool | None = None
    fill: int = 0


class NSend(Request, tag="nsend"):
    """Send ``data`` on ``sock`` at endpoint time ``at`` (None: now).

    Sends on one socket leave in request order. A ``tag`` asks for an
    ``NTag`` carrying the kernel transmit time or the error.

    ``fill`` (TCP only): after ``data``, the endpoint writes ``fill``
    pseudo-random bytes of its own as the socket drains, and reports the
    kernel TX times of the first and last in one ``NFill`` (delivered even
    while suppressed). The guard counts ``len(data) + fill`` bytes.
    """

    id: int
    sock: int
    data: bytes
    dst: str | None = None
    port: int | None = None
    at: int | None = None
    tag: int | None = None
    ttl: int | None = None
    tos: int | None = None
    df: bool | None = None
    fill: int = 0


class NSendV(Request, tag="nsendv"):
    """Many sends in one request: like ``sendmmsg``, it amortises framing
    and dispatch so high probe rates do not pay per-message costs."""

    id: int
    sends: list[SendItem]


class NCap(Request, tag="ncap"):
    """Capture on a raw socket until ``until`` (None: until closed).

    Exactly one of ``filter`` (tcpdump expression) or ``program`` (classic
    BPF instructions ``(code, jt, jf, k)``) is given; both None captures all.
    """

    id: int
    sock: int
    filter: str | None = None
    program: list[tuple[int, int, int, int]] | None = None
    until: int | None = None


class NCtl(Request, tag="nctl"):
    """Control: ``op`` is "suppress" / "resume" (notification delivery) or
    "shutdown" (TCP write side, at ``at``)."""

    id: int
    op: str
    sock: int | None = None
    at: int | None = None


class NCount(Request, tag="ncount"):
    """Count mode for a connected TCP socket: from now on received bytes
    are counted on the endpoint (with their kernel receive times) instead of
    shipped as ``NData``. Memory stays bounded: a progress sample (kernel rx
    ns, cumulative bytes) at most every ``interval_ns`` (at most
    ``max_samples``), the receive that first reaches ``mark`` bytes, the first
    and the last. When the peer closes or the connection fails (or ``NClose``)
    one ``NCountEnd`` carries the summary, delivered even while suppressed."""

    id: int
    sock: int
    mark: int = 0
    interval_ns: int = 10_000_000
    max_samples: int = 100_000
    head: int = 64


class Task(Request, tag="task"):
    """Run a primitive on the endpoint."""

    id: int
    primitive: str
    params: dict[str, Any] = {}


class Halt(Request, tag="halt"):
    id: int
    task: int


class Ping(Request, tag="ping"):
    """Control-channel ping; the reply's times give an NTP-style offset."""

    id: int


# --------------------------------------------------------------------------
# Replies (endpoint -> client)
# --------------------------------------------------------------------------


class Ok(Message, tag="ok"):
    """Success with an optional small value (e.g. the number of sends queued)."""

    id: int
    value: Any = None


class Error(Message, tag="err"):
    """Failure of request ``id`` (0 when not tied to a request).

    ``code`` is a short machine-readable word; ``reason`` is for humans.
    """

    id: int
    code: str
    reason: str
    rule: str | None = None


class Opened(Message, tag="opened"):
    id: int
    sock: int
    laddr: str | None = None
    lport: int | None = None
    raddr: str | None = None
    rport: int | None = None


class InfoReply(Message, tag="inforeply"):
    id: int
    clock_ns: int
    name: str
    version: str
    protocol: int
    addresses: list[str]
    capabilities: dict[str, bool]
    buffer_limit: int
    buffer_used: int
    limits: dict[str, int] = {}
    resolvers: list[str] = []  # the host's DNS resolvers (resolv.conf), for dns() without a server
    #: Health and usage: the send engine (restarts, why), this principal's
    #: sessions and sockets against its limits, drops so far.
    status: dict[str, Any] = {}


class Pong(Message, tag="pong"):
    """``t_rx``/``t_tx``: endpoint clock when the ping arrived / reply left."""

    id: int
    t_rx: int
    t_tx: int


# --------------------------------------------------------------------------
# Notifications (endpoint -> client). Every one has sock/time_ns/tag/data/
# peer/ts_source, so client code can handle them uniformly.
# --------------------------------------------------------------------------


class Notification(Message):
    """Asynchronous event from the endpoint.

    Client code handles notifications uniformly through ``kind``, ``sock``,
    ``time_ns``, ``tag``, ``data``, ``peer`` and ``ts_source``; a kind that
    has no such field answers None here instead of carrying a nil on the wire.
    """

    @property
    def kind(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    @property
    def sock(self) -> int | None:
        return None

    @property
    def time_ns(self) -> int | None:
        return None

    @property
    def tag(self) -> int | None:
        return None

    @property
    def data(self) -> bytes | None:
        return None

    @property
    def peer(self) -> str | None:
        return None

    @property
    def ts_source(self) -> TsSource | None:
        return None


class NData(Notification, tag="ndata"):
    """Received data (or a captured packet) with the kernel receive time."""

    sock: int
    time_ns: int
    ts_source: TsSource
    data: bytes
    peer: str | None = None
    port: int | None = None
    ttl: int | None = None


class NTag(Notification, tag="ntag"):
    """Outcome of a tagged send: kernel transmit time, or ``error``."""

    sock: int
    tag: int
    time_ns: int | None
    ts_source: TsSource | None
    nbytes: int = 0
    error: str | None = None
    at: int | None = None


class NIcmp(Notification, tag="nicmp"):
    """An ICMP error for a send on a UDP/TCP socket (IP_RECVERR).

    ``peer`` is the router that sent the error; ``data`` the quoted payload.
    """

    sock: int
    time_ns: int | None
    ts_source: TsSource | None
    peer: str | None
    icmp_type: int
    icmp_code: int
    errno: int
    data: bytes = b""
    info: int = 0


class NStat(Notification, tag="nstat"):
    """TCP state change: "established", "accepted" (``child`` is the new
    socket), "peer-closed", "shutdown", "reset", "timeout", "refused",
    "error"."""

    sock: int
    time_ns: int
    state: str
    child: int | None = None
    peer: str | None = None
    port: int | None = None
    reason: str | None = None


class NDrop(Notification, tag="ndrop"):
    """Notifications lost because a buffer was full: never silent.

    ``kinds`` counts them by kind; "controller" and "client" name drops in
    the controller's and the client library's buffers."""

    time_ns: int
    count: int
    nbytes: int
    kinds: dict[str, int] = {}
    #: Per socket id, where the loss is known per socket (e.g. "kernel":
    #: datagrams the kernel dropped because the socket's receive buffer
    #: was full).
    socks: dict[int, int] = {}


class NBlock(Notification, tag="nblock"):
    """The guard blocked an operation or received data."""

    time_ns: int
    sock: int | None
    what: str
    rule: str
    reason: str


class NCapEnd(Notification, tag="ncapend"):
    """A capture reached its ``until`` time."""

    sock: int
    time_ns: int
    packets: int


class NCountEnd(Notification, tag="ncountend"):
    """The summary of a socket's count mode (see ``NCount``). ``state`` is
    how it ended ("peer-closed", "reset", "timeout", "error", "closed");
    ``mark_bytes``/``mark_ns`` the cumulative count and kernel time of the
    receive that first reached the mark (0 if it never did); ``head`` the
    first bytes received (e.g. a server's error line); ``samples`` are
    (kernel rx ns, cumulative bytes); ``samples_lost`` those past
    ``max_samples``."""

    sock: int
    time_ns: int
    state: str
    nbytes: int
    first_ns: int = 0
    last_ns: int = 0
    mark_bytes: int = 0
    mark_ns: int = 0
    head: bytes = b""
    samples: list[tuple[int, int]] = []
    samples_lost: int = 0
    ts_source: TsSource = "kernel"
    reason: str | None = None


class NFill(Notification, tag="nfill"):
    """A fill (``NSend.fill``) finished: ``nbytes`` of it written, kernel
    TX times of its first and last byte (``ts_source`` "user" when the
    kernel's stamp did not come), or ``error``. Delivered even while
    suppressed."""

    sock: int
    time_ns: int
    nbytes: int
    first_ns: int | None = None
    last_ns: int | None = None
    ts_source: TsSource | None = None
    tag: int | None = None
    at: int | None = None
    error: str | None = None


class TaskResult(Notification, tag="taskres"):
    """Final result of a task: ``result`` is the primitive's JSON-able dict,
    or ``error`` says why it failed."""

    task: int
    time_ns: int
    result: dict[str, Any] | None = None
    error: str | None = None


class TaskProgress(Notification, tag="taskprog"):
    task: int
    time_ns: int
    info: dict[str, Any] = {}


# --------------------------------------------------------------------------
# Connection-level
# --------------------------------------------------------------------------


class Bye(Message, tag="bye"):
    """Sent before closing a connection on purpose (e.g. a protocol error)."""

    code: str
    reason: str


# --------------------------------------------------------------------------
# Controller links. An endpoint dials out to the controller and registers;
# the controller then multiplexes client sessions over that one connection
# as numbered channels. A channel carries a byte stream of ordinary frames
# (the same requests, replies and notifications as a direct connection),
# so the controller routes ``ChData`` without decoding what is inside.
# --------------------------------------------------------------------------


class Register(Message, tag="register"):
    """Endpoint -> controller after hello: who this VP is."""

    id: int
    name: str
    meta: dict[str, Any] = {}


class ChOpen(Message, tag="chopen"):
    """Controller -> endpoint: open a session for a client on channel ``ch``;
    ``principal`` is the client's identity as the controller authenticated it."""

    ch: int
    principal: dict[str, Any] = {}


class ChData(Message, tag="chdata"):
    """Frames for channel ``ch``. ``note``: the chunk holds only
    notifications, which a controller may drop (and count) for a slow client."""

    ch: int
    data: bytes
    note: bool = False


class ChFlow(Message, tag="chflow"):
    """Backpressure across a controller: ``pause`` asks the other side to
    stop sending on channel ``ch`` (its reader is slow), until a ``ChFlow``
    with ``pause=False``. An endpoint then holds notifications and stops
    reading stream sockets, so TCP flow control slows the far sender,
    instead of the controller dropping what it cannot deliver."""

    ch: int
    pause: bool


class ChClose(Message, tag="chclose"):
    ch: int
    reason: str = ""


class VpList(Message, tag="vplist"):
    """Client -> controller: the registry (optionally only live VPs)."""

    id: int
    alive_only: bool = True


class VpListReply(Message, tag="vplistreply"):
    id: int
    vps: list[dict[str, Any]]


class Attach(Message, tag="attach"):
    """Client -> controller: open a packet/task channel to VP ``vp``."""

    id: int
    vp: str


class Attached(Message, tag="attached"):
    id: int
    ch: int
    vp: dict[str, Any] = {}


class VpEvent(Message, tag="vpevent"):
    """Controller -> client: a VP arrived, came back or went away."""

    vp: str
    event: str  # "arrived", "gone"
    info: dict[str, Any] = {}


REQUESTS: tuple[type[Message], ...] = (
    Info, Auth, NOpen, NClose, NSend, NSendV, NCap, NCtl, Task, Halt, Ping, NCount,
)
REPLIES: tuple[type[Message], ...] = (Ok, Error, Opened, InfoReply, Pong)
NOTIFICATIONS: tuple[type[Message], ...] = (
    NData, NTag, NIcmp, NStat, NDrop, NBlock, NCapEnd, TaskResult, TaskProgress, NCountEnd, NFill,
)
CONTROLLER: tuple[type[Message], ...] = (
    Register, ChOpen, ChData, ChFlow, ChClose, VpList, VpListReply, Attach, Attached, VpEvent,
)
ALL_MESSAGES: tuple[type[Message], ...] = (
    (Hello, Bye) + REQUESTS + REPLIES + NOTIFICATIONS + CONTROLLER
)
