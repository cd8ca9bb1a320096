"""OIDC login through a real node, a browser-like client (urllib with a cookie jar,
following redirects) and the test's own provider (tests/oidc_provider.py)."""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import time
import urllib.error
import urllib.request

import pytest

from edgeplane.node.auth.oidc import Sealer
from oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider

from conftest import app_config, free_port

SESSION_SECRET = "a-session-secret-of-at-least-32-characters!"


@pytest.fixture(scope="module")
def provider():
    started = OidcProvider(id_token_lifetime=2)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def shop(provider, tmp_path_factory):
    """One node and one echo backend for every test here; tests compare the provider's
    counters before and after, so their order does not matter."""
    from conftest import Echo, Node
    server = Echo()
    port = free_port()
    config = app_config([server.server()], port, [
        {"conditions": [{"var": "path", "op": "eq", "values": ["/"]}], "actions": [{"respond": {"body": "home\n"}}]},
        {"actions": [{"authenticate": {"provider": "login"}}, {"proxy": {"upstream": "up"}}]}])
    config["auth_providers"] = [{"name": "login", "oidc": {
        "issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "session_secret": SESSION_SECRET, "claims_to_headers": {"email": "X-Email"}}}]
    started = Node(tmp_path_factory.mktemp("oidc"), config, access_log=False)
    yield port
    started.stop()
    server.stop()


def browser() -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)), jar


def delta(provider: OidcProvider, before: dict) -> dict:
    return {name: n - before[name] for name, n in provider.calls.items() if n != before[name]}


def visit(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, str, bytes]:
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.url, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.url, error.read()


def test_login_sets_a_session_that_later_requests_use(shop, provider):
    before = dict(provider.calls)
    opener, jar = browser()
    status, url, body = visit(opener, f"http://127.0.0.1:{shop}/orders?page=2")
    assert (status, url) == (200, f"http://127.0.0.1:{shop}/orders?page=2")  # back where the login began
    seen = json.loads(body)
    assert seen["headers"]["X-Email"] == ["alice@example.com"]
    assert "edgeplane_session" not in seen["headers"].get("Cookie", [""])[0]  # the upstream never sees the session
    assert delta(provider, before) == {"authorize": 1, "code": 1}
    assert {c.name for c in jar} == {"edgeplane_session"}
    assert visit(opener, f"http://127.0.0.1:{shop}/cart")[0] == 200
    assert delta(provider, before) == {"authorize": 1, "code": 1}  # no second login


def test_an_expired_id_token_is_refreshed_without_a_new_login(shop, provider):
    opener, _ = browser()
    before = dict(provider.calls)
    assert visit(opener, f"http://127.0.0.1:{shop}/a")[0] == 200
    time.sleep(2.2)  # the ID token lives 2 s
    assert visit(opener, f"http://127.0.0.1:{shop}/b")[0] == 200
    assert delta(provider, before) == {"authorize": 1, "code": 1, "refresh": 1}


def test_logout_clears_the_session_and_the_next_visit_logs_in_again(shop, provider):
    opener, jar = browser()
    before = dict(provider.calls)
    assert visit(opener, f"http://127.0.0.1:{shop}/a")[0] == 200
    status, url, body = visit(opener, f"http://127.0.0.1:{shop}/oauth2/logout")
    assert (status, url, body) == (200, f"http://127.0.0.1:{shop}/", b"home\n")
    assert not [c for c in jar if c.name == "edgeplane_session" and c.value]
    assert visit(opener, f"http://127.0.0.1:{shop}/a")[0] == 200
    assert delta(provider, before) == {"authorize": 2, "code": 2, "logout": 1}


def test_a_tampered_session_cookie_is_no_session(shop, provider):
    opener, jar = browser()
    before = dict(provider.calls)
    assert visit(opener, f"http://127.0.0.1:{shop}/a")[0] == 200
    for cookie in jar:
        cookie.value = cookie.value[:-4] + ("AAAA" if not cookie.value.endswith("AAAA") else "BBBB")
    assert visit(opener, f"http://127.0.0.1:{shop}/a")[0] == 200
    assert delta(provider, before) == {"authorize": 2, "code": 2}  # it had to log in again


def test_a_callback_without_the_login_it_answers_is_refused(shop, provider):
    opener, _ = browser()
    before = dict(provider.calls)
    status, _, _ = visit(opener, f"http://127.0.0.1:{shop}/oauth2/callback?code=stolen&state=guess")
    assert status == 401
    assert delta(provider, before) == {}


def test_a_request_other_than_get_without_session_gets_401(shop):
    request = urllib.request.Request(f"http://127.0.0.1:{shop}/api", data=b"{}", method="POST")
    opener, _ = browser()
    try:
        opener.open(request, timeout=10)
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as error:
        assert error.code == 401
        assert error.headers["WWW-Authenticate"] == 'Bearer realm="login"'


def test_an_unreachable_provider_answers_503_and_the_node_keeps_serving(echo, node):
    """Discovery cannot connect: a request that must log in gets 503 with Retry-After (again
    the next one, which does not wait for another try); routes without the provider and
    requests of a live session are served."""
    port, nowhere = free_port(), free_port()
    config = app_config([echo().server()], port, [
        {"conditions": [{"var": "path", "op": "eq", "values": ["/"]}], "actions": [{"respond": {"body": "home\n"}}]},
        {"actions": [{"authenticate": {"provider": "login"}}, {"proxy": {"upstream": "up"}}]}])
    config["auth_providers"] = [{"name": "login", "oidc": {
        "issuer": f"http://127.0.0.1:{nowhere}", "client_id": CLIENT_ID, "session_secret": SESSION_SECRET}}]
    node(config)
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/account")
        response = conn.getresponse()
        assert (response.status, response.read()) == (
            503, b"503 Service Unavailable: the identity provider cannot be reached\n")
        assert response.getheader("Retry-After") == "5"
        conn.close()
    assert visit(browser()[0], f"http://127.0.0.1:{port}/")[::2] == (200, b"home\n")
    # A live session needs no provider: it is let through, its claims go upstream.
    now = time.time()
    session = Sealer(SESSION_SECRET, b"session").seal({"claims": {"sub": "ann"}, "refresh": None, "id_token": "",
                                                        "expires": now + 60, "started": now})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/account", headers={"Cookie": f"edgeplane_session={session}"})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["path"] == "/account"
    conn.close()


def test_a_token_endpoint_that_cannot_be_reached_answers_503_not_a_failed_login(echo, node):
    """The provider goes away between the browser's visit to it and the callback: the
    callback answers 503 (the provider cannot be reached), not 401 (a refused login)."""
    server, port = echo(), free_port()
    gone = OidcProvider()
    config = app_config([server.server()], port, [
        {"actions": [{"authenticate": {"provider": "login"}}, {"proxy": {"upstream": "up"}}]}])
    config["auth_providers"] = [{"name": "login", "oidc": {
        "issuer": gone.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "session_secret": SESSION_SECRET}}]
    node(config)

    class StopAtCallback(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if "/oauth2/callback" in newurl:
                raise urllib.error.HTTPError(newurl, code, "the callback", headers, fp)
            return super().redirect_request(req, fp, code, msg, headers, newurl)
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), StopAtCallback())
    status, callback, _ = visit(opener, f"http://127.0.0.1:{port}/orders")
    assert status == 302 and "/oauth2/callback?" in callback
    gone.stop()
    gone.server.server_close()
    status, _, body = visit(opener, callback)
    assert (status, body) == (503, b"503 Service Unavailable: the identity provider cannot be reached\n")
