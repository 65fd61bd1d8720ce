#!/usr/bin/env python3
"""Local stand-ins for package registries and a git server (a TEST STAND-IN).

The client-compatibility tests run real package managers and git through the
enforcer against these loopback stand-ins instead of the real internet. Nothing
here talks to any real registry: `build` writes a tiny package
(`enforcer-compat-demo` 1.0.0) in every format, and `serve` serves them over
HTTPS from a loopback address, routing by the Host header, so clients that
believe they talk to pypi.org, registry.npmjs.org, index.crates.io,
proxy.golang.org or github.com are in fact talking to this script.

    python3 registry.py build OUT --host-map JSON
        Writes OUT/<host>/<path> for every artifact and a bare git repository
        OUT/_git/compat-demo.git; prints one JSON manifest line on stdout.
        --host-map is a JSON object (or @FILE holding one) naming the hosts to
        embed in URLs; keys: pypi files npm crates_index crates_dl goproxy
        git static (missing keys take the real registries' names).
        Everything is deterministic (fixed mtimes, fixed order), so checksums
        are stable between runs.

    python3 registry.py serve --listen ADDR:PORT --cert CERT --key KEY \
            --root OUT --log LOGFILE
        HTTPS (TLS 1.2+, HTTP/1.1 keep-alive, Content-Length on every
        response). Appends `connect <peer>` to LOGFILE for every accepted TCP
        connection (before the TLS handshake) and `<METHOD> <host> <path>
        <status>` for every request. Serves ROOT/<host>/<path> (a directory
        serves its index.html, else its index.json), and git smart HTTP
        (`/<name>.git/...` on any host) through `git http-backend` over
        ROOT/_git. Prints `ready` once listening; exits on SIGTERM.

Standard library only (Python 3.11).
"""

import argparse
import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.parse
import zipfile

NAME = "enforcer-compat-demo"
VERSION = "1.0.0"
VALUE = f"{NAME} {VERSION}"
PY_DIST = "enforcer_compat_demo"
GO_MODULE = "example.test/compatdemo"
GO_VERSION = "v1.0.0"
GO_TIME = "2026-01-01T00:00:00Z"
GIT_REPO = "compat-demo.git"

DEFAULT_HOSTS = {
    "pypi": "pypi.org",
    "files": "files.pythonhosted.org",
    "npm": "registry.npmjs.org",
    "crates_index": "index.crates.io",
    "crates_dl": "static.crates.io",
    "goproxy": "proxy.golang.org",
    "git": "github.com",
    "static": "static.example.com",
}

# Fixed timestamps: zip wants a DOS date (>= 1980), tar an epoch.
ZIP_DATE = (2026, 1, 1, 0, 0, 0)
TAR_MTIME = 1767225600  # 2026-01-01T00:00:00Z
GIT_DATE = "2026-01-01T00:00:00+0000"


# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------

def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def write(out, host, rel, data):
    path = os.path.join(out, host, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_zip(entries):
    """entries: list of (name, bytes) in the order given; stored (no
    compression) so the bytes do not depend on the zlib build."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = (0o100644 << 16)
            info.create_system = 3  # Unix, so the mode bits mean something
            z.writestr(info, data)
    return buf.getvalue()


def make_tgz(entries, dir_entries=()):
    """entries: list of (name, bytes); a ustar tar, gzipped with mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name in dir_entries:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = TAR_MTIME
            t.addfile(info)
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = TAR_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


def record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def build_pip(out, hosts):
    dist_info = f"{PY_DIST}-{VERSION}.dist-info"
    files = [
        (f"{PY_DIST}/__init__.py", f'VALUE = "{VALUE}"\n'.encode()),
        (f"{dist_info}/METADATA", (
            "Metadata-Version: 2.1\n"
            f"Name: {NAME}\n"
            f"Version: {VERSION}\n"
            "Summary: Test stand-in package of the enforcer's compatibility tests\n"
            "License: MIT\n"
        ).encode()),
        (f"{dist_info}/WHEEL", (
            "Wheel-Version: 1.0\n"
            "Generator: enforcer-compat-registry\n"
            "Root-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ).encode()),
    ]
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{dist_info}/RECORD,,\n"
    files.append((f"{dist_info}/RECORD", record.encode()))
    wheel = make_zip(files)
    wheel_name = f"{PY_DIST}-{VERSION}-py3-none-any.whl"
    write(out, hosts["files"], f"packages/{wheel_name}", wheel)
    wheel_sha = sha256_hex(wheel)
    url = f"https://{hosts['files']}/packages/{wheel_name}"
    project = (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta name="pypi:repository-version" content="1.0">\n'
        f"<title>Links for {NAME}</title>\n</head>\n<body>\n"
        f"<h1>Links for {NAME}</h1>\n"
        f'<a href="{url}#sha256={wheel_sha}">{wheel_name}</a><br/>\n'
        "</body>\n</html>\n"
    )
    write(out, hosts["pypi"], f"simple/{NAME}/index.html", project.encode())
    root = (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta name="pypi:repository-version" content="1.0">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
        f'<a href="/simple/{NAME}/">{NAME}</a><br/>\n'
        "</body>\n</html>\n"
    )
    write(out, hosts["pypi"], "simple/index.html", root.encode())
    return {
        "url": url,
        "sha256": wheel_sha,
        "filename": wheel_name,
        "index_url": f"https://{hosts['pypi']}/simple/",
    }


def build_npm(out, hosts):
    manifest = {"name": NAME, "version": VERSION, "main": "index.js"}
    package_json = (json.dumps(manifest, indent=2) + "\n").encode()
    index_js = f'module.exports = "{VALUE}";\n'.encode()
    tgz = make_tgz([("package/package.json", package_json), ("package/index.js", index_js)])
    tgz_name = f"{NAME}-{VERSION}.tgz"
    write(out, hosts["npm"], f"{NAME}/-/{tgz_name}", tgz)
    tarball_url = f"https://{hosts['npm']}/{NAME}/-/{tgz_name}"
    shasum = hashlib.sha1(tgz).hexdigest()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    version = dict(manifest)
    version.update({
        "_id": f"{NAME}@{VERSION}",
        "description": "Test stand-in package of the enforcer's compatibility tests",
        "license": "MIT",
        "dependencies": {},
        "dist": {"tarball": tarball_url, "shasum": shasum, "integrity": integrity},
    })
    packument = {
        "_id": NAME,
        "name": NAME,
        "description": "Test stand-in package of the enforcer's compatibility tests",
        "dist-tags": {"latest": VERSION},
        "versions": {VERSION: version},
        "time": {"created": GO_TIME, "modified": GO_TIME, VERSION: GO_TIME},
        "modified": GO_TIME,
        "license": "MIT",
    }
    # The packument lives at /<name>, and the tarball under /<name>/-/: a file
    # and a directory cannot share a name, so the packument is the directory's
    # index.json, which `serve` answers for /<name> (and /<name>/).
    body = (json.dumps(packument, indent=2, sort_keys=True) + "\n").encode()
    write(out, hosts["npm"], f"{NAME}/index.json", body)
    return {
        "tarball_url": tarball_url,
        "sha256": sha256_hex(tgz),
        "shasum": shasum,
        "integrity": integrity,
        "registry": f"https://{hosts['npm']}/",
    }


def cargo_index_path(name):
    name = name.lower()
    if len(name) == 1:
        return f"1/{name}"
    if len(name) == 2:
        return f"2/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[0:2]}/{name[2:4]}/{name}"


def build_cargo(out, hosts):
    prefix = f"{NAME}-{VERSION}"
    cargo_toml = (
        "# Test stand-in crate of the enforcer's compatibility tests.\n"
        "[package]\n"
        'edition = "2021"\n'
        f'name = "{NAME}"\n'
        f'version = "{VERSION}"\n'
        'description = "Test stand-in crate of the enforcer\'s compatibility tests"\n'
        'license = "MIT"\n'
        "\n"
        "[lib]\n"
        'name = "enforcer_compat_demo"\n'
        'path = "src/lib.rs"\n'
    ).encode()
    cargo_toml_orig = (
        "[package]\n"
        f'name = "{NAME}"\n'
        f'version = "{VERSION}"\n'
        'edition = "2021"\n'
        'description = "Test stand-in crate of the enforcer\'s compatibility tests"\n'
        'license = "MIT"\n'
    ).encode()
    lib_rs = f'pub const VALUE: &str = "{VALUE}";\n'.encode()
    crate = make_tgz([
        (f"{prefix}/Cargo.toml", cargo_toml),
        (f"{prefix}/Cargo.toml.orig", cargo_toml_orig),
        (f"{prefix}/src/lib.rs", lib_rs),
    ])
    crate_sha = sha256_hex(crate)
    write(out, hosts["crates_dl"], f"crates/{NAME}/{prefix}.crate", crate)
    config = {"dl": f"https://{hosts['crates_dl']}/crates/{{crate}}/{{crate}}-{{version}}.crate"}
    write(out, hosts["crates_index"], "config.json", (json.dumps(config) + "\n").encode())
    line = {
        "name": NAME,
        "vers": VERSION,
        "deps": [],
        "cksum": crate_sha,
        "features": {},
        "yanked": False,
    }
    index_rel = cargo_index_path(NAME)
    write(out, hosts["crates_index"], index_rel,
          (json.dumps(line, separators=(",", ":")) + "\n").encode())
    return {
        "crate_sha256": crate_sha,
        "index_url": f"sparse+https://{hosts['crates_index']}/",
        "index_path": index_rel,
        "crate_url": f"https://{hosts['crates_dl']}/crates/{NAME}/{prefix}.crate",
    }


def go_escape(path):
    """The GOPROXY protocol's case encoding: uppercase -> '!' + lowercase."""
    return re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), path)


def go_h1(files):
    """golang.org/x/mod/sumdb/dirhash.Hash1 over (name, bytes) pairs."""
    summary = "".join(f"{sha256_hex(data)}  {name}\n"
                      for name, data in sorted(files, key=lambda f: f[0]))
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def build_go(out, hosts):
    go_mod = f"module {GO_MODULE}\n\ngo 1.19\n".encode()
    source = f'package compatdemo\n\nconst Value = "{VALUE}"\n'.encode()
    prefix = f"{GO_MODULE}@{GO_VERSION}/"
    files = [(prefix + "compatdemo.go", source), (prefix + "go.mod", go_mod)]
    mod_zip = make_zip(files)
    info = (json.dumps({"Version": GO_VERSION, "Time": GO_TIME}) + "\n").encode()
    base = go_escape(GO_MODULE)
    version = go_escape(GO_VERSION)
    write(out, hosts["goproxy"], f"{base}/@v/list", f"{GO_VERSION}\n".encode())
    write(out, hosts["goproxy"], f"{base}/@v/{version}.info", info)
    write(out, hosts["goproxy"], f"{base}/@v/{version}.mod", go_mod)
    write(out, hosts["goproxy"], f"{base}/@v/{version}.zip", mod_zip)
    write(out, hosts["goproxy"], f"{base}/@latest", info)
    return {
        "module": GO_MODULE,
        "version": GO_VERSION,
        "zip_sha256": sha256_hex(mod_zip),
        "h1": go_h1(files),
        "mod_h1": go_h1([("go.mod", go_mod)]),
        "proxy": f"https://{hosts['goproxy']}",
    }


def build_git(out, hosts):
    git_root = os.path.join(out, "_git")
    bare = os.path.abspath(os.path.join(git_root, GIT_REPO))
    if os.path.exists(bare):
        shutil.rmtree(bare)
    os.makedirs(git_root, exist_ok=True)
    readme = f"{VALUE}\n".encode()
    with tempfile.TemporaryDirectory(prefix="compat-git-home-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": home,
            "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "Enforcer Compat",
            "GIT_AUTHOR_EMAIL": "compat@example.test",
            "GIT_AUTHOR_DATE": GIT_DATE,
            "GIT_COMMITTER_NAME": "Enforcer Compat",
            "GIT_COMMITTER_EMAIL": "compat@example.test",
            "GIT_COMMITTER_DATE": GIT_DATE,
        }

        def git(*args, stdin=None):
            result = subprocess.run(["git", *args], input=stdin, env=env, cwd=git_root,
                                    check=True, stdout=subprocess.PIPE)
            return result.stdout.decode().strip()

        git("init", "--quiet", "--bare", "--object-format=sha1",
            "--initial-branch=main", bare)
        gd = "--git-dir=" + bare
        blob = git(gd, "hash-object", "-w", "--stdin", stdin=readme)
        tree = git(gd, "mktree", stdin=f"100644 blob {blob}\tREADME\n".encode())
        head = git(gd, "commit-tree", tree, "-m", VALUE, stdin=b"")
        git(gd, "update-ref", "refs/heads/main", head)
        git(gd, "symbolic-ref", "HEAD", "refs/heads/main")
        git(gd, "config", "http.receivepack", "false")
        git(gd, "update-server-info")
    return {
        "bare": bare,
        "head": head,
        "readme_sha256": sha256_hex(readme),
        "url": f"https://{hosts['git']}/{GIT_REPO}",
    }


def build_static(out, hosts):
    chunks = []
    for counter in range((1 << 20) // 32):
        chunks.append(hashlib.sha256(b"enforcer-compat-blob" + counter.to_bytes(8, "big")).digest())
    blob = b"".join(chunks)
    write(out, hosts["static"], "files/blob.bin", blob)
    return {"url": f"https://{hosts['static']}/files/blob.bin", "sha256": sha256_hex(blob),
            "size": len(blob)}


def cmd_build(args):
    raw = args.host_map
    if raw.startswith("@"):
        with open(raw[1:]) as f:
            raw = f.read()
    given = json.loads(raw)
    unknown = set(given) - set(DEFAULT_HOSTS)
    if unknown:
        sys.exit(f"registry.py: unknown --host-map keys: {sorted(unknown)}")
    hosts = dict(DEFAULT_HOSTS)
    for key, host in given.items():
        host = str(host).strip().lower()
        if not host or "/" in host or host.startswith(".") or host == "_git":
            sys.exit(f"registry.py: bad host for {key}: {host!r}")
        hosts[key] = host
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    manifest = {
        "pip": build_pip(out, hosts),
        "npm": build_npm(out, hosts),
        "cargo": build_cargo(out, hosts),
        "go": build_go(out, hosts),
        "git": build_git(out, hosts),
        "static": build_static(out, hosts),
        "hosts": hosts,
        "root": out,
    }
    sys.stdout.write(json.dumps(manifest, sort_keys=True) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".info": "application/json",
    ".mod": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".zip": "application/zip",
    ".whl": "application/octet-stream",
    ".tgz": "application/octet-stream",
    ".crate": "application/octet-stream",
    ".bin": "application/octet-stream",
}

GIT_PATH = re.compile(
    r"^/([A-Za-z0-9._-]+\.git)/(info/refs|git-upload-pack|git-receive-pack|HEAD|objects/.+)$")


class Log:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", buffering=1)

    def line(self, text):
        with self.lock:
            self.file.write(text + "\n")
            self.file.flush()


def peer_str(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HandshakeFailed(Exception):
    pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, ctx, root, log):
        self.ctx = ctx
        self.root = root
        self.log = log
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        self.log.line(f"connect {peer_str(addr)}")
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (HandshakeFailed, ConnectionError, TimeoutError, ssl.SSLError)):
            return
        sys.stderr.write(f"registry.py: error serving {peer_str(client_address)}: {exc!r}\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "enforcer-compat-registry"
    timeout = 60

    def version_string(self):
        return self.server_version

    def setup(self):
        self.request.settimeout(self.timeout)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            sys.stderr.write(f"registry.py: TLS handshake with {peer_str(self.client_address)} failed: {e}\n")
            raise HandshakeFailed() from e
        super().setup()

    def parse_request(self):
        self._host = self.path = None
        ok = super().parse_request()
        if ok:
            self._host = self.target()[0] or "-"
        return ok

    # ---- logging: one line per response, through the shared log ----
    def log_request(self, code="-", size="-"):
        if isinstance(code, http.HTTPStatus):
            code = code.value
        host = getattr(self, "_host", None) or "-"
        path = getattr(self, "path", None) or "-"
        method = getattr(self, "command", None) or "-"
        self.server.log.line(f"{method} {host} {path} {code}")

    def log_message(self, fmt, *args):
        pass

    def log_error(self, fmt, *args):
        sys.stderr.write("registry.py: " + (fmt % args) + "\n")

    # ---- helpers ----
    def reply(self, status, body, content_type="text/plain; charset=utf-8", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def target(self):
        """(host, path, query) of the request; absolute-form targets too."""
        raw = self.path
        host = self.headers.get("Host", "")
        if raw.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(raw)
            host = parts.netloc
            raw = parts.path or "/"
            if parts.query:
                raw += "?" + parts.query
        host = host.strip().lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        host = host.rstrip(".")
        path, _, query = raw.partition("?")
        path = path.split("#", 1)[0]
        return host, path, query

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # ---- methods ----
    def do_GET(self):
        self.dispatch(b"")

    def do_HEAD(self):
        self.dispatch(b"")

    def do_POST(self):
        self.dispatch(self.read_body())

    def dispatch(self, body):
        host, path, query = self.target()
        self._host = host or "-"
        decoded = urllib.parse.unquote(path)
        if not decoded.startswith("/") or ".." in decoded.split("/") or "\x00" in decoded \
                or "\\" in decoded:
            return self.reply(400, b"bad path\n")
        if not host or "/" in host or host.startswith(".") or host == "_git" or "\\" in host:
            return self.reply(404, b"unknown host\n")
        m = GIT_PATH.match(decoded)
        if m:
            return self.git_backend(decoded, query, body)
        if self.command == "POST":
            return self.reply(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])
        self.serve_file(host, decoded)

    def serve_file(self, host, decoded):
        root = os.path.realpath(self.server.root)
        host_dir = os.path.realpath(os.path.join(root, host))
        if os.path.dirname(host_dir) != root or not os.path.isdir(host_dir):
            return self.reply(404, b"not found\n")
        full = os.path.realpath(os.path.join(host_dir, decoded.lstrip("/")))
        if full != host_dir and not full.startswith(host_dir + os.sep):
            return self.reply(400, b"bad path\n")
        if os.path.isdir(full):
            for index in ("index.html", "index.json"):
                if os.path.isfile(os.path.join(full, index)):
                    full = os.path.join(full, index)
                    break
            else:
                return self.reply(404, b"not found\n")
        elif decoded.endswith("/") or not os.path.isfile(full):
            return self.reply(404, b"not found\n")
        with open(full, "rb") as f:
            data = f.read()
        ext = os.path.splitext(full)[1].lower()
        ctype = CONTENT_TYPES.get(ext)
        if ctype is None:
            ctype = "application/json" if data.lstrip()[:1] == b"{" else "text/plain; charset=utf-8"
        self.reply(200, data, ctype)

    def git_backend(self, decoded, query, body):
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": self.server_version,
            "GIT_PROJECT_ROOT": os.path.join(os.path.realpath(self.server.root), "_git"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": decoded,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
        }
        if "HOME" in os.environ:
            env["HOME"] = os.environ["HOME"]
        if self.command == "POST":
            env["CONTENT_LENGTH"] = str(len(body))
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"),
                            ("Git-Protocol", "HTTP_GIT_PROTOCOL")):
            value = self.headers.get(header)
            if value:
                env[var] = value
        try:
            result = subprocess.run(["git", "http-backend"], input=body, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            sys.stderr.write(f"registry.py: git http-backend failed: {e}\n")
            return self.reply(500, b"git http-backend failed\n")
        out = result.stdout
        if result.returncode != 0 or re.match(rb"Status: [45]", out):
            sys.stderr.write(f"registry.py: git http-backend exited {result.returncode}: "
                             + result.stderr.decode(errors="replace") + "\n")
        sep = re.search(rb"\r?\n\r?\n", out)
        if not sep:
            return self.reply(502, b"bad CGI output\n")
        head, payload = out[:sep.start()], out[sep.end():]
        status = 200
        headers = []
        ctype = "application/octet-stream"
        for line in head.decode("latin-1").splitlines():
            if ":" not in line:
                continue
            key, value = (s.strip() for s in line.split(":", 1))
            lk = key.lower()
            if lk == "status":
                status = int(value.split()[0])
            elif lk == "content-type":
                ctype = value
            elif lk in ("content-length", "transfer-encoding", "connection"):
                continue
            else:
                headers.append((key, value))
        self.reply(status, payload, ctype, headers)


def parse_listen(value):
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT, got {value!r}")
    return host, int(port)


def cmd_serve(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    log = Log(args.log)
    server = Server(args.listen, ctx, os.path.abspath(args.root), log)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def main():
    parser = argparse.ArgumentParser(description="Local registry and git stand-ins (test only).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write every artifact under OUT, print the manifest")
    b.add_argument("out", metavar="OUT")
    b.add_argument("--host-map", default="{}", metavar="JSON")
    s = sub.add_parser("serve", help="serve OUT over HTTPS")
    s.add_argument("--listen", required=True, type=parse_listen, metavar="ADDR:PORT")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--root", required=True, metavar="OUT")
    s.add_argument("--log", required=True, metavar="LOGFILE")
    args = parser.parse_args()
    if args.cmd == "build":
        cmd_build(args)
    else:
        cmd_serve(args)


if __name__ == "__main__":
    main()
