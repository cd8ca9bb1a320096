"""What the benchmark sends and what it configures: requests, backend body, proxy configs.

Everything both proxies see is generated here from one definition, so nginx and edgeplane
get byte-identical requests and equivalent routing tables. Nothing in this module starts a
process or opens a socket.
"""

from __future__ import annotations

import json
import os

# --- the request ----------------------------------------------------------------------

# A browser-like XHR: ten headers (Host included), ~500 bytes on the wire.
BROWSER_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/124.0.0.0 Safari/537.36"),
    ("Accept", "application/json,text/html;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.9,de;q=0.7"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Cookie", "sid=3f1c9a2b7d4e8f60a1b2c3d4; _ga=GA1.2.1048576.1716200000"),
    ("Referer", "https://www.bench.test/catalog/shoes"),
    ("X-Requested-With", "XMLHttpRequest"),
    ("Cache-Control", "no-cache"),
    ("Connection", "keep-alive"),
]
SCENARIO_A_HOST = "www.bench.test"
SCENARIO_A_PATH = "/catalog/shoes/4711?color=blue"


def raw_request(host: str, path: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"] + [f"{name}: {value}" for name, value in BROWSER_HEADERS]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def header_count() -> int:
    return len(BROWSER_HEADERS) + 1


# --- the backend ----------------------------------------------------------------------

_BODY_HEAD = b'{"status":"ok","service":"bench-backend","pad":"'
_BODY_TAIL = b'"}'
BACKEND_BODY = _BODY_HEAD + b"x" * (100 - len(_BODY_HEAD) - len(_BODY_TAIL)) + _BODY_TAIL
assert len(BACKEND_BODY) == 100
STUB_PATH = "/__bench_stub_status"


# --- scenario (b): 50 applications, 10 regex rules ------------------------------------

APPS = 50
REGEX_APPS = 10
# (pattern, a path it matches); none overlaps the /api/ and /static/ prefixes, so the
# first-match order of edgeplane rules and nginx's location selection pick the same rule.
REGEXES = [
    (r"^/users/[0-9]+/profile$", "/users/48213/profile"),
    (r"^/orders/[0-9a-f]{8}$", "/orders/3fa9c2b1"),
    (r"\.(png|jpe?g|gif|webp)$", "/img/banner-2024.webp"),
    (r"^/blog/[0-9]{4}/[0-9]{2}/[a-z0-9-]+$", "/blog/2024/05/spring-sale"),
    (r"^/p/[A-Za-z0-9_-]{6,}$", "/p/Xk3_9aQ"),
    (r"^/v[0-9]+/items/[0-9]+/reviews$", "/v2/items/991/reviews"),
    (r"^/(en|de|fr)/checkout$", "/de/checkout"),
    (r"^/files/.+\.pdf$", "/files/reports/q1.pdf"),
    (r"^/search/[a-z]+$", "/search/boots"),
    (r"^/cart/[0-9]+/items$", "/cart/77/items"),
]
assert len(REGEXES) == REGEX_APPS


def app_name(index: int) -> str:
    return f"app{index:02d}"


def app_host(index: int) -> str:
    return f"{app_name(index)}.bench.test"


def mix_targets() -> list[tuple[str, str, str]]:
    """(host, path, rule expected to serve it), interleaved so consecutive requests differ in host."""
    per_app = []
    for index in range(APPS):
        regex_path = REGEXES[index % REGEX_APPS][1]
        per_app.append([
            (app_host(index), "/api/v1/orders?limit=20&offset=40", "api"),
            (app_host(index), "/static/js/app.3f9a1c.js", "static"),
            (app_host(index), regex_path, "regex" if index < REGEX_APPS else "default"),
            (app_host(index), "/catalog/shoes?page=2", "default"),
        ])
    targets = []
    for slot in range(4):
        for index in range(APPS):
            targets.append(per_app[index][(slot + index) % 4])
    return targets


# --- edgeplane configs ----------------------------------------------------------------

def _limits() -> dict:
    # Equal to the nginx configs below: idle keep-alive for 300s, 100k requests per client
    # connection, so neither proxy closes wrk's connections mid-run. drain bounds shutdown.
    return {"keepalive_timeout": "300s", "keepalive_requests": 100000, "client_header_timeout": "60s",
            "drain_timeout": "2s"}


def _upstream(backend_port: int) -> dict:
    return {"name": "backend", "servers": [{"address": "127.0.0.1", "port": backend_port}],
            "pool": {"max_idle": 64, "idle_timeout": "300s", "max_requests": 100000},
            "timeouts": {"connect": "2s", "read": "10s"}}


def edgeplane_simple(port: int, backend_port: int) -> dict:
    return {
        "settings": {"limits": _limits(), "access_log": {"enabled": False}},
        "upstreams": [_upstream(backend_port)],
        "applications": [{
            "name": "bench", "domains": [SCENARIO_A_HOST], "ports": [port],
            "rules": [{"name": "all", "actions": [{"proxy": {"upstream": "backend"}}]}],
        }],
    }


def edgeplane_many(port: int, backend_port: int) -> dict:
    apps = []
    for index in range(APPS):
        rules = [
            {"name": "api", "conditions": [{"var": "path", "op": "prefix", "values": ["/api/"]}],
             "actions": [{"set-request-header": {"name": "X-App", "value": app_name(index)}},
                         {"proxy": {"upstream": "backend"}}]},
            {"name": "static", "conditions": [{"var": "path", "op": "prefix", "values": ["/static/"]}],
             "actions": [{"set-response-header": {"name": "Cache-Control", "value": "public, max-age=3600"}},
                         {"proxy": {"upstream": "backend"}}]},
        ]
        if index < REGEX_APPS:
            rules.append({"name": "regex",
                          "conditions": [{"var": "path", "op": "regex", "values": [REGEXES[index][0]]}],
                          "actions": [{"set-response-header": {"name": "X-Rule", "value": "regex"}},
                                      {"proxy": {"upstream": "backend"}}]})
        rules.append({"name": "default", "actions": [{"proxy": {"upstream": "backend"}}]})
        apps.append({"name": app_name(index), "domains": [app_host(index)], "ports": [port], "rules": rules})
    return {
        "settings": {"limits": _limits(), "access_log": {"enabled": True}},
        "upstreams": [_upstream(backend_port)],
        "applications": apps,
    }


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=1)


# --- nginx configs --------------------------------------------------------------------

def _nginx_main(prefix: str, worker_connections: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}worker_processes 1;\ndaemon off;\nmaster_process on;\n"
            f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
            f"events {{ worker_connections {worker_connections}; }}\n")


def _nginx_http_common(prefix: str) -> str:
    return (f"  client_body_temp_path {prefix}/tmp/body;\n  proxy_temp_path {prefix}/tmp/proxy;\n"
            f"  fastcgi_temp_path {prefix}/tmp/fastcgi;\n  uwsgi_temp_path {prefix}/tmp/uwsgi;\n"
            f"  scgi_temp_path {prefix}/tmp/scgi;\n")


def nginx_backend(prefix: str, port: int) -> str:
    body = BACKEND_BODY.decode()
    return _nginx_main(prefix, 8192) + (
        "http {\n" + _nginx_http_common(prefix) +
        "  access_log off;\n  keepalive_timeout 300s;\n  keepalive_requests 1000000;\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        f"    location = {STUB_PATH} {{ stub_status; }}\n"
        f"    location / {{ default_type application/json; return 200 '{body}'; }}\n  }}\n}}\n")


# What edgeplane sends upstream besides the client's headers; nginx is told to do the same.
_PROXY_HEADERS = [
    ("Host", "$http_host"), ("Connection", '""'),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"), ("X-Forwarded-Proto", "$scheme"),
    ("X-Forwarded-Host", "$http_host"), ("X-Request-Id", "$request_id"),
]


def _proxy_headers(indent: str, extra: list[tuple[str, str]] = ()) -> str:
    return "".join(f"{indent}proxy_set_header {name} {value};\n" for name, value in [*_PROXY_HEADERS, *extra])


def _nginx_proxy_http(prefix: str, backend_port: int, status_port: int | None) -> str:
    status = (f"  server {{ listen 127.0.0.1:{status_port}; location / {{ stub_status; }} }}\n"
              if status_port else "")
    return (_nginx_http_common(prefix) +
            "  keepalive_timeout 300s;\n  keepalive_requests 100000;\n"
            "  proxy_http_version 1.1;\n" + _proxy_headers("  ") +
            "  upstream backend {\n"
            f"    server 127.0.0.1:{backend_port};\n"
            "    keepalive 64;\n    keepalive_requests 100000;\n    keepalive_timeout 300s;\n  }\n" + status)


def nginx_simple(prefix: str, port: int, backend_port: int) -> str:
    return _nginx_main(prefix, 16384) + (
        "http {\n  access_log off;\n" + _nginx_proxy_http(prefix, backend_port, None) +
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    server_name {SCENARIO_A_HOST};\n"
        "    location / { proxy_pass http://backend; }\n  }\n}\n")


NGINX_LOG_FORMAT = (
    "  log_format bench escape=json '{\"time\":\"$msec\",\"request_id\":\"$request_id\","
    "\"client\":\"$remote_addr\",\"method\":\"$request_method\",\"host\":\"$host\",\"uri\":\"$request_uri\","
    "\"status\":$status,\"bytes_in\":$request_length,\"bytes_out\":$bytes_sent,"
    "\"application\":\"$server_name\",\"upstream_addr\":\"$upstream_addr\","
    "\"upstream_status\":\"$upstream_status\",\"duration_ms\":\"$request_time\","
    "\"connect_ms\":\"$upstream_connect_time\",\"upstream_ms\":\"$upstream_response_time\","
    "\"worker\":\"$pid\"}';\n")


def nginx_many(prefix: str, port: int, backend_port: int, status_port: int, access_log: str) -> str:
    servers = []
    for index in range(APPS):
        locations = [
            "    location /api/ {\n" + _proxy_headers("      ", [("X-App", app_name(index))]) +
            "      proxy_pass http://backend;\n    }\n",
            "    location /static/ {\n      add_header Cache-Control \"public, max-age=3600\";\n"
            "      proxy_pass http://backend;\n    }\n",
        ]
        if index < REGEX_APPS:
            locations.append(f"    location ~ \"{REGEXES[index][0]}\" {{\n      add_header X-Rule regex;\n"
                             "      proxy_pass http://backend;\n    }\n")
        locations.append("    location / { proxy_pass http://backend; }\n")
        listen = f"127.0.0.1:{port} backlog=4096" if index == 0 else f"127.0.0.1:{port}"  # options once per address
        servers.append(f"  server {{\n    listen {listen};\n"
                       f"    server_name {app_host(index)};\n" + "".join(locations) + "  }\n")
    return _nginx_main(prefix, 16384) + (
        "http {\n" + NGINX_LOG_FORMAT +
        f"  access_log {access_log} bench buffer=64k flush=1s;\n" +
        _nginx_proxy_http(prefix, backend_port, status_port) + "".join(servers) + "}\n")
