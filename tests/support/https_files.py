"""An HTTPS file server on 127.0.0.1 that honours Range and can cut connections: a model registry
for the pull-mode tests and benchmarks."""
from __future__ import annotations

import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Registry:
    """Serves a directory over HTTPS on 127.0.0.1. ``cut`` maps a path to a byte count: the first
    GET of that path sends its full Content-Length but only that many bytes, then closes."""

    def __init__(self, root, cert_file, key_file):
        self.root, self.cut, self.requests = root, {}, []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                registry.requests.append((path, self.headers.get("Range")))
                full = os.path.join(registry.root, path)
                if ".." in path or not os.path.isfile(full):
                    self.send_error(404)
                    return
                with open(full, "rb") as f:
                    data = f.read()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = registry.cut.pop(path, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = "https://127.0.0.1:%d/" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
