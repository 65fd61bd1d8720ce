#!/usr/bin/env python3
"""The loopback stand-ins of `cargo xtask test-vm --systemd` (TLS from the
VM's test CA): upstream.vm.test:8443 (the allowlisted host), other.vm.test:8444
(never allowlisted: any request to it is a failure) and provider.vm.test:9443
(a lane's provider, Anthropic's Messages API shape). Every request is
recorded as one JSON line (server, method, path, and the auth headers the
provider saw) in --record, a root-only file. Prints `ready` once all listen.
"""
import argparse
import http.server
import json
import ssl
import sys
import threading

RECORD_LOCK = threading.Lock()


def handler_for(server_name, record_path):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def record(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            entry = {
                "server": server_name,
                "method": self.command,
                "path": self.path,
                "x-api-key": self.headers.get("x-api-key"),
                "authorization": self.headers.get("authorization"),
            }
            with RECORD_LOCK, open(record_path, "a") as record:
                record.write(json.dumps(entry) + "\n")

        def reply(self, status, body, content_type):
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.record()
            self.reply(200, f"{server_name}-ok\n", "text/plain")

        def do_POST(self):
            self.record()
            if server_name == "provider" and self.path.startswith("/v1/messages"):
                message = {
                    "id": "msg_vm_mock",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-haiku-4-5",
                    "content": [{"type": "text", "text": "hello from the VM's mock provider"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                }
                self.reply(200, json.dumps(message), "application/json")
            else:
                self.reply(404, "not found\n", "text/plain")

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    servers = []
    for name, port in (("upstream", 8443), ("other", 8444), ("provider", 9443)):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler_for(name, args.record))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
