"""The shared REST client against real HTTP on 127.0.0.1: the rate budget, token sessions, paging, retries, JSON."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from http_servers import Reply as Answer
from http_servers import Request, ScriptedServer

from engine.adapters.rest import RateBudget, RestClient, RestConfig, TokenSession
from engine.errors import ConnectError, RecordError

MakeClient = Callable[..., RestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """RestClients with quick retries, closed after the test."""
    made: list[RestClient] = []

    def make(url: str, *, pool_size: int = 4, **options: Any) -> RestClient:
        options = {"max_retries": 3, "backoff": 0.01, "max_backoff": 2.0, "timeout": 5.0, **options}
        client = RestClient(RestConfig(url=url, **options), base_dir=tmp_path, pool_size=pool_size)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def json_answer(data: Any, status: int = 200, headers: dict[str, str] | None = None, delay: float = 0.0) -> Answer:
    return Answer(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}, delay)


def query(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}


def path_of(request: Request) -> str:
    return urlsplit(request.path).path


class Recorder:
    """A 200 JSON answer to everything, with the monotonic time each request arrived."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Answer:
        with self.lock:
            self.arrivals.append(time.monotonic())
        return json_answer({"ok": True})


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of ``times`` inside any half-open interval ``window`` long."""
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times))


# --- 1. the rate budget ------------------------------------------------------------------------------------------


def test_rate_budget_holds_limit_in_any_window_across_threads() -> None:
    budget = RateBudget(5, window=1.0, margin=0.0)
    taken: list[tuple[float, float]] = []  # (time the slot was returned, seconds waited)
    lock = threading.Lock()

    def take(_: int) -> None:
        waited = budget.acquire()
        now = time.monotonic()
        with lock:
            taken.append((now, waited))

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(take, range(10)))
    elapsed = time.monotonic() - start

    taken.sort()
    times = [t for t, _ in taken]
    waits = [w for _, w in taken]
    assert most_in_any_window(times, 1.0 - 0.02) <= 5
    assert waits[:5] == [0.0] * 5  # the first five go at once
    assert waits[5] >= 0.9  # the sixth waits for the first to leave the window
    assert times[5] - times[0] >= 0.98
    assert elapsed >= 1.0
    assert budget.waits == sum(1 for w in waits if w) >= 1
    assert budget.waited == pytest.approx(sum(waits))


def test_rate_budget_over_http_spaces_the_sixth_call(make_client: MakeClient) -> None:
    recorder = Recorder()
    with ScriptedServer(recorder) as server:
        client = make_client(server.url)
        client.budget = RateBudget(5, window=1.0, margin=0.0)
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda i: client.call("GET", "/n", params={"i": i}), range(10)))

    assert [r.status for r in replies] == [200] * 10
    arrivals = sorted(recorder.arrivals)
    assert len(arrivals) == 10
    assert arrivals[5] - arrivals[0] >= 0.95
    assert most_in_any_window(arrivals, 0.95) <= 5
    assert client.budget.waits >= 1
    assert client.budget.waited >= 0.9


def test_rate_budget_for_host_is_shared_and_lowered(make_client: MakeClient) -> None:
    with ScriptedServer(Recorder()) as server, ScriptedServer(Recorder()) as other:
        first = make_client(server.url, calls_per_minute=100)
        second = make_client(server.url + "/api/v2", calls_per_minute=100)
        assert first.budget is not None and first.budget is second.budget
        assert first.budget is RateBudget.for_host(server.url, 100)
        assert first.budget.limit == 100
        assert first.budget.window == 61.0  # a minute, plus the margin

        lower = make_client(server.url, calls_per_minute=40)
        assert lower.budget is first.budget and first.budget.limit == 40  # lowered for everyone
        higher = make_client(server.url, calls_per_minute=90)
        assert higher.budget is first.budget and first.budget.limit == 40  # never raised again

        elsewhere = make_client(other.url, calls_per_minute=100)
        assert elsewhere.budget is not None and elsewhere.budget is not first.budget
        assert make_client(server.url).budget is None  # no quota, no budget

        # Calls from both clients, the login included, take slots of the one budget.
        def login() -> tuple[str, float | None]:
            first.expect(first.login_call("/login", {"user": "u"}))
            return "tok", None

        first.session = TokenSession(login)
        for _ in range(3):
            first.call("GET", "/a")
        second.call("GET", "/b")
        second.call("GET", "/c")
        assert len(first.budget.sent) == 1 + 3 + 2
        assert len(elsewhere.budget.sent) == 0


# --- 2. 429 with Retry-After -------------------------------------------------------------------------------------


class ThrottleOnce:
    def __init__(self, retry_after: str | None) -> None:
        self.retry_after = retry_after
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Answer:
        with self.lock:
            self.arrivals.append(time.monotonic())
            first = len(self.arrivals) == 1
        if first:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return json_answer({"error": "slow down"}, 429, headers)
        return json_answer({"value": 42})


def test_429_with_retry_after_is_waited_out(make_client: MakeClient) -> None:
    script = ThrottleOnce("1")
    with ScriptedServer(script) as server:
        client = make_client(server.url, max_retries=3, backoff=0.01)
        start = time.monotonic()
        reply = client.call("GET", "/value")
        elapsed = time.monotonic() - start

    assert reply.status == 200 and reply.data == {"value": 42}
    assert len(script.arrivals) == 2
    assert script.arrivals[1] - script.arrivals[0] >= 0.98
    assert elapsed >= 1.0
    assert client.calls == 2


def test_throttled_counts_a_429_that_was_retried(make_client: MakeClient) -> None:
    """BUG repro: ``throttled`` ("answers 429 received") only counts a 429 that exhausted the retries."""
    script = ThrottleOnce(None)
    with ScriptedServer(script) as server:
        client = make_client(server.url, max_retries=3, backoff=0.01)
        reply = client.call("GET", "/value")

    assert reply.status == 200 and len(script.arrivals) == 2
    assert client.throttled == 1


def test_retry_after_longer_than_max_backoff_is_cut(make_client: MakeClient) -> None:
    script = ThrottleOnce("30")
    with ScriptedServer(script) as server:
        client = make_client(server.url, max_retries=2, backoff=0.01, max_backoff=0.2)
        start = time.monotonic()
        reply = client.call("GET", "/value")
        elapsed = time.monotonic() - start

    assert reply.status == 200
    assert elapsed < 2.0


# --- 3. the budget keeps a quota server from answering 429 -------------------------------------------------------


class QuotaServer:
    """Accepts at most ``limit`` calls in any ``window`` seconds (counted on arrival); 429 for the rest."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.accepted: deque[float] = deque()
        self.statuses: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Answer:
        with self.lock:
            now = time.monotonic()
            while self.accepted and now - self.accepted[0] >= self.window:
                self.accepted.popleft()
            if len(self.accepted) >= self.limit:
                self.statuses.append(429)
                return json_answer({"error": "quota exceeded"}, 429, {"Retry-After": "1"})
            self.accepted.append(now)
            self.statuses.append(200)
        return json_answer({"ok": True})


def test_budgeted_client_never_gets_429_from_a_quota_server(make_client: MakeClient) -> None:
    quota = 5
    enforcing = QuotaServer(quota, window=1.0)
    unbudgeted = QuotaServer(quota, window=1.0)
    with ScriptedServer(enforcing) as server, ScriptedServer(unbudgeted) as control:
        client = make_client(server.url, calls_per_minute=quota)
        assert client.budget is not None
        client.budget.window = 1.0 + 0.15  # a short window for the test; the margin covers the trip to the server
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda i: client.call("GET", "/r", params={"i": i}), range(2 * quota)))
        elapsed = time.monotonic() - start

        # The same calls without a budget (and no retries) do run into the quota: the server enforces it.
        bare = make_client(control.url, max_retries=0)
        bare_statuses = [bare.call("GET", "/r").status for _ in range(2 * quota)]

    assert [r.status for r in replies] == [200] * (2 * quota)
    assert enforcing.statuses == [200] * (2 * quota)
    assert client.throttled == 0
    assert elapsed >= 1.0
    assert bare_statuses.count(429) == quota
    assert bare.throttled == quota


# --- 4. token sessions -------------------------------------------------------------------------------------------


class TokenService:
    """``POST /login`` hands out ``t1``, ``t2``, ... living ``lifetime`` seconds; other paths need a live token."""

    def __init__(self, lifetime: float = 3600.0, reject_delay: float = 0.0) -> None:
        self.lifetime = lifetime
        self.reject_delay = reject_delay
        self.logins = 0
        self.issued: dict[str, float] = {}
        self.revoked: set[str] = set()
        self.refuse_all = False
        self.log: list[tuple[str, str | None, int]] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Answer:
        path = path_of(request)
        if path == "/login":
            if json.loads(request.body) != {"user": "sync", "password": "pw"} or "Authorization" in request.headers:
                return json_answer({"error": "bad login"}, 403)
            with self.lock:
                self.logins += 1
                token = f"t{self.logins}"
                self.issued[token] = time.monotonic()
                self.log.append((path, None, 200))
            return json_answer({"token": token, "expires_in": self.lifetime})
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        with self.lock:
            issued = self.issued.get(token or "")
            live = (not self.refuse_all and issued is not None and token not in self.revoked
                    and time.monotonic() - issued < self.lifetime)
            self.log.append((path, token, 200 if live else 401))
        if not live:
            return json_answer({"error": "invalid token"}, 401, delay=self.reject_delay)
        return json_answer({"token": token})

    def rejected(self) -> int:
        with self.lock:
            return sum(1 for _, _, status in self.log if status == 401)


def with_session(client: RestClient, margin: float = 30.0) -> TokenSession:
    def login() -> tuple[str, float | None]:
        reply = client.expect(client.login_call("/login", {"user": "sync", "password": "pw"}))
        return reply.data["token"], reply.data["expires_in"]

    client.session = TokenSession(login, margin=margin)
    return client.session


def test_token_is_renewed_ahead_of_expiry(make_client: MakeClient) -> None:
    short = TokenService(lifetime=2.0)
    narrow = TokenService(lifetime=2.0)
    with ScriptedServer(short) as server, ScriptedServer(narrow) as other:
        client = make_client(server.url)
        session = with_session(client)  # margin 30 s: renewed half the 2 s lifetime ahead, after 1 s
        other_client = make_client(other.url)
        other_session = with_session(other_client, margin=0.3)  # renewed 0.3 s ahead, after 1.7 s
        start = time.monotonic()
        seen = [client.call("GET", "/me").data["token"], other_client.call("GET", "/me").data["token"]]
        time.sleep(0.5)
        seen += [client.call("GET", "/me").data["token"], other_client.call("GET", "/me").data["token"]]
        time.sleep(max(0.0, 1.25 - (time.monotonic() - start)))
        seen += [client.call("GET", "/me").data["token"], other_client.call("GET", "/me").data["token"]]

    assert seen == ["t1", "t1", "t1", "t1", "t2", "t1"]
    assert short.logins == session.logins == 2
    assert narrow.logins == other_session.logins == 1
    assert short.rejected() == narrow.rejected() == 0  # renewed before the server ever refused it


def test_401_logs_in_once_and_repeats_the_call(make_client: MakeClient) -> None:
    service = TokenService()
    with ScriptedServer(service) as server:
        client = make_client(server.url)
        session = with_session(client)
        assert client.call("GET", "/me").data == {"token": "t1"}
        service.revoked.add("t1")  # the server forgets the token early
        reply = client.call("GET", "/me", params={"q": 1})

    assert reply.status == 200 and reply.data == {"token": "t2"}
    assert service.log == [("/login", None, 200), ("/me", "t1", 200), ("/me", "t1", 401), ("/login", None, 200),
                           ("/me", "t2", 200)]
    assert service.logins == session.logins == 2


def test_second_401_after_relogin_is_a_connect_error(make_client: MakeClient) -> None:
    service = TokenService()
    service.refuse_all = True
    with ScriptedServer(service) as server:
        client = make_client(server.url)
        session = with_session(client)
        with pytest.raises(ConnectError, match="refused a fresh token"):
            client.call("GET", "/me")

    assert service.log == [("/login", None, 200), ("/me", "t1", 401), ("/login", None, 200), ("/me", "t2", 401)]
    assert service.logins == session.logins == 2


def test_401_storm_from_eight_threads_logs_in_once(make_client: MakeClient) -> None:
    service = TokenService(reject_delay=0.5)  # every thread's 401 is in flight before the first comes back
    threads = 8
    with ScriptedServer(service) as server:
        client = make_client(server.url, pool_size=threads + 2)
        session = with_session(client)
        assert client.call("GET", "/me").data == {"token": "t1"}
        service.revoked.add("t1")
        barrier = threading.Barrier(threads)

        def call(_: int) -> Any:
            barrier.wait(10)
            return client.call("GET", "/me").data

        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(call, range(threads)))

    assert answers == [{"token": "t2"}] * threads
    assert service.rejected() == threads  # all eight held the old token at once...
    assert service.logins == session.logins == 2  # ...and only one logged in again


# --- 5. paging -------------------------------------------------------------------------------------------------


def catalogue(request: Request) -> Answer:
    """``/items?n=&offset=&limit=`` answers a bare array; ``/pages?n=&page=&pageSize=`` a ``data`` envelope."""
    q = query(request)
    items = [{"id": i} for i in range(int(q.get("n", "2500")))]
    if path_of(request) == "/items":
        offset, limit = int(q["offset"]), int(q["limit"])
        return json_answer(items[offset:offset + limit])
    page, size = int(q["page"]), int(q["pageSize"])
    return json_answer({"data": items[(page - 1) * size:page * size], "total": len(items)})


def test_offset_pages(make_client: MakeClient) -> None:
    with ScriptedServer(catalogue) as server:
        client = make_client(server.url)
        pages = list(client.offset_pages("/items", {"status": "open", "n": 2500}, limit=1000))
        calls = [query(r) for r in server.requests]
        exact = list(client.offset_pages("/items", {"n": 2000}, limit=1000))

    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [item["id"] for page in pages for item in page] == list(range(2500))
    assert calls == [{"status": "open", "n": "2500", "offset": str(o), "limit": "1000"} for o in (0, 1000, 2000)]
    assert [len(p) for p in exact] == [1000, 1000, 0]  # an exact multiple ends on an empty page
    assert len(server.requests) == 3 + 3


def test_numbered_pages(make_client: MakeClient) -> None:
    with ScriptedServer(catalogue) as server:
        client = make_client(server.url)
        pages = list(client.numbered_pages("/pages", {"n": 2500}, size=1000))

    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [item["id"] for page in pages for item in page] == list(range(2500))
    assert [query(r) for r in server.requests] == [{"n": "2500", "page": str(p), "pageSize": "1000"}
                                                   for p in (1, 2, 3)]


class Feed:
    """``/feed?cursor=k``: ten items a page; the next link in ``links``, keyed by cursor."""

    def __init__(self, links: dict[int, str | None]) -> None:
        self.links = links

    def __call__(self, request: Request) -> Answer:
        cursor = int(query(request)["cursor"])
        items = list(range(cursor * 10, cursor * 10 + 10))
        return json_answer({"items": items, "next": self.links.get(cursor)})


def items_of(reply: Any) -> list[Any]:
    return list(reply.data["items"])


def next_of(reply: Any) -> str | None:
    link: str | None = reply.data["next"]
    return link


def test_linked_pages_follow_relative_and_absolute_links(make_client: MakeClient) -> None:
    feed = Feed({})
    with ScriptedServer(feed) as server:
        feed.links = {0: "/feed?cursor=1", 1: "feed?cursor=2", 2: f"{server.url}/feed?cursor=3", 3: None}
        client = make_client(server.url)
        pages = list(client.linked_pages("/feed", {"cursor": 0}, next_link=next_of, items=items_of))

    assert [x for page in pages for x in page] == list(range(40))
    assert [r.path for r in server.requests] == [f"/feed?cursor={k}" for k in range(4)]


def test_linked_pages_that_loop_raise(make_client: MakeClient) -> None:
    feed = Feed({0: "?cursor=1", 1: "/feed?cursor=2", 2: "/feed?cursor=0"})
    read: list[list[Any]] = []
    with ScriptedServer(feed) as server:
        client = make_client(server.url)
        with pytest.raises(ConnectError, match="loops back"):
            for page in client.linked_pages("/feed", {"cursor": 0}, next_link=next_of, items=items_of):
                read.append(page)

    assert len(read) == 3
    assert len(server.requests) == 3  # the page already read is not fetched again


def test_linked_pages_never_follow_a_link_to_another_host(make_client: MakeClient) -> None:
    """A next link elsewhere would receive this service's bearer token: it is refused, nothing is sent there."""
    service = TokenService()
    elsewhere = Feed({1: None})
    with ScriptedServer(elsewhere) as foreign:

        def script(request: Request) -> Answer:
            if path_of(request) == "/login":
                return service(request)
            return json_answer({"items": [1], "next": f"{foreign.url.replace('127.0.0.1', 'localhost')}/feed"})

        with ScriptedServer(script) as server:
            client = make_client(server.url)
            with_session(client)
            with pytest.raises(ConnectError, match="next link to another host"):
                list(client.linked_pages("/feed", {"cursor": 0}, next_link=next_of, items=items_of))

    assert foreign.requests == []


# --- 6. retries --------------------------------------------------------------------------------------------------


class Sequence:
    """Answers from a list, in order; the last one for ever after."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Answer:
        with self.lock:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_503_then_200_succeeds(make_client: MakeClient) -> None:
    with ScriptedServer(Sequence(json_answer({}, 503), json_answer({"id": 7}, 201))) as server:
        client = make_client(server.url, max_retries=3)
        reply = client.call("POST", "/things", body={"name": "x"})

    assert reply.status == 201 and reply.data == {"id": 7}
    assert [r.body for r in server.requests] == [b'{"name": "x"}'] * 2
    assert client.calls == 2


def test_connection_refused_is_a_connect_error_after_the_retries(make_client: MakeClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        client = make_client(f"http://127.0.0.1:{sock.getsockname()[1]}", max_retries=2)
        with pytest.raises(ConnectError, match=r"cannot reach http://127\.0\.0\.1:\d+ after 3 attempts"):
            client.call("GET", "/x")
    assert client.calls == 3


def test_5xx_exhausted_returns_the_reply(make_client: MakeClient) -> None:
    with ScriptedServer(Sequence(Answer(502, b"bad gateway", {"Content-Type": "text/plain"}))) as server:
        client = make_client(server.url, max_retries=2)
        reply = client.call("GET", "/x")
        with pytest.raises(ConnectError, match="HTTP 502: bad gateway"):
            client.expect(reply)

    assert reply.status == 502 and reply.text == "bad gateway" and reply.data is None
    assert len(server.requests) == 3  # the first try and two retries
    assert client.throttled == 0


def test_other_answers_are_not_retried(make_client: MakeClient) -> None:
    def script(request: Request) -> Answer:
        return json_answer({"error": "nope"}, 401 if path_of(request) == "/private" else 404)

    with ScriptedServer(script) as server:
        client = make_client(server.url, max_retries=3)
        reply = client.call("GET", "/missing")
        unauthenticated = client.call("GET", "/private")  # no session: a 401 is the caller's to judge
        assert len(server.requests) == 2

    assert reply.status == 404 and reply.data == {"error": "nope"}
    assert unauthenticated.status == 401
    with ScriptedServer(Sequence(json_answer({}, 407))) as proxy:
        client = make_client(proxy.url, max_retries=3)
        with pytest.raises(ConnectError, match=r"refused the credentials \(HTTP 407\)"):
            client.call("GET", "/x")
        assert len(proxy.requests) == 1


def test_timeouts_are_retried_then_a_connect_error(make_client: MakeClient) -> None:
    with ScriptedServer(Sequence(json_answer({}, delay=0.6))) as server:
        client = make_client(server.url, max_retries=1, timeout=0.2)
        with pytest.raises(ConnectError, match=r"no answer within 0\.2s after 2 attempts"):
            client.call("GET", "/slow")
        assert len(server.requests) == 2


# --- 7. JSON -----------------------------------------------------------------------------------------------------


def test_json_body_decimals_and_datetimes(make_client: MakeClient) -> None:
    with ScriptedServer(Sequence(json_answer({"ok": True}))) as server:
        client = make_client(server.url)
        body = {
            "price": Decimal("69.33"),
            "scaled": Decimal("69.330"),
            "tiny": Decimal("0.1000000000000000000001"),
            "huge": Decimal("12345678901234567890"),
            "when": datetime(2024, 5, 6, 7, 8, 9, 123456),
            "day": date(2024, 5, 6),
            "name": "Zoë",
        }
        client.call("POST", "/echo", body=body, params={"active": True, "skip": None, "n": 3})
        (request,) = server.requests

    raw = request.body.decode("utf-8")
    assert '"price": 69.33,' in raw and '"scaled": 69.33,' in raw
    assert '"tiny": "0.1000000000000000000001"' in raw
    assert '"huge": "12345678901234567890"' in raw
    assert json.loads(raw, parse_float=Decimal) == {
        "price": Decimal("69.33"), "scaled": Decimal("69.33"), "tiny": "0.1000000000000000000001",
        "huge": "12345678901234567890", "when": "2024-05-06T07:08:09", "day": "2024-05-06", "name": "Zoë"}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert query(request) == {"active": "true", "n": "3"}


def test_a_body_with_an_infinite_decimal_is_a_record_error_and_nothing_is_sent(make_client: MakeClient) -> None:
    """JSON has no NaN or infinity: such a body is the record's error, never the bare token ``Infinity``."""
    with ScriptedServer(Sequence(json_answer({"ok": True}))) as server:
        client = make_client(server.url)
        for value in (Decimal("NaN"), Decimal("Infinity"), float("inf")):
            with pytest.raises(RecordError, match="NaN or infinity"):
                client.call("POST", "/echo", body={"v": value})
        assert server.requests == []