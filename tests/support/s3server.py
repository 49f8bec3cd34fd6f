"""A local S3-compatible server for the tests and the storage bench: moto's server mode, in
its own process, on a free 127.0.0.1 port (no client is patched; needs `moto[server]`, in the
`test` extra), a proxy in front of it that delays every request, and one that cuts chosen answers short."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


#: moto takes any credentials: these, where the environment has none (set before Ray starts,
#: so actors inherit them), and no instance-metadata lookups
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def use_dummy_credentials() -> None:
    for key, value in DUMMY_CREDENTIALS.items():
        os.environ.setdefault(key, value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload(fs: Any, local: Path, bucket_and_prefix: str) -> None:
    """Copy a folder (or one file) to `bucket/prefix` of a pyarrow file system, creating the
    bucket if it is not there."""
    import pyarrow.fs as pafs

    bucket = bucket_and_prefix.split("/")[0]
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        fs.create_dir(bucket)
    if Path(local).is_dir():
        pafs.copy_files(str(local), bucket_and_prefix, destination_filesystem=fs)
    else:
        with fs.open_output_stream(bucket_and_prefix) as f:
            f.write(Path(local).read_bytes())


def _wait_listening(port: int, alive: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"nothing came to listen on 127.0.0.1:{port}") from None
            time.sleep(0.1)


class S3Server:
    """moto's S3 server on 127.0.0.1; `endpoint`, `options` (a job's storage options), `fs`."""

    def __init__(self) -> None:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        log = os.environ.get("RAYINFER_S3_LOG")  # moto's request log and tracebacks, for debugging
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(log, "a") if log else subprocess.DEVNULL)  # noqa: SIM115
        _wait_listening(port, lambda: self.process.poll() is None)

    @property
    def options(self) -> dict[str, str]:
        """The job's storage options for this server."""
        return {"endpoint_override": self.endpoint}

    @property
    def fs(self) -> Any:
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, allow_bucket_creation=True,
                                 allow_bucket_deletion=True)

    def upload(self, local: Path, bucket_and_prefix: str) -> str:
        """Copy a folder (or one file) to `bucket/prefix`, creating the bucket; returns its s3:// URL."""
        upload(self.fs, local, bucket_and_prefix)
        return f"s3://{bucket_and_prefix}"

    def add_user(self, name: str, statements: list[dict[str, Any]]) -> dict[str, str]:
        """An IAM user with an inline policy of `statements`; its credentials as environment
        variables (boto3, a dependency of moto, talks to the same server's IAM)."""
        import json

        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def require_auth(self, on: bool = True) -> None:
        """From now on every request is authenticated and authorized as AWS would (moto's IAM:
        unknown keys and unsigned requests are refused, policies are applied); `on=False`:
        none is again (moto's default)."""
        import urllib.request

        count = b"0" if on else b"inf"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count,
                                                      method="POST", headers={"Content-Type": "text/plain"}),
                               timeout=10).read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class _Proxy:
    """A listener on a free 127.0.0.1 port in front of `upstream_port`; each client
    connection goes to `_connected` (in the accepting thread: start a thread there)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._connected(client)

    def _connected(self, client: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.listener.close()


def _shut(*sockets: socket.socket | None) -> None:
    """Shut both directions of each socket, ignoring the ones already gone."""
    for s in sockets:
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DelayingProxy(_Proxy):
    """A TCP proxy on 127.0.0.1 in front of `upstream_port` that holds what a client sends
    for `delay_s` before passing it on, each time it sends (a GET is one send): the latency
    of a far-away store, on every request."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.delay_s = delay_s
        super().__init__(upstream_port)

    def _connected(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream))
        threading.Thread(target=self._pump, args=(client, server, self.delay_s), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        try:
            while data := src.recv(1 << 16):
                if delay_s:
                    time.sleep(delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src, dst)


class CuttingProxy(_Proxy):
    """An HTTP proxy on 127.0.0.1 in front of `upstream_port` that cuts chosen answers short:
    for a request where `cut(method, path)` is true it passes on the answer's headers and half
    its body, then drops the connection (a store or a network failing mid-object). Other
    requests pass whole; connections are kept alive as the client asks. `cut` is called once
    per request, so it can count (cut the first two GETs of a key, say)."""

    def __init__(self, upstream_port: int, cut: Any) -> None:
        self.cut = cut
        super().__init__(upstream_port)

    def _connected(self, client: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        upstream = None
        try:
            while True:
                head, body = _read_message(reader)
                if head is None:
                    return
                method, path = head.split(b" ", 2)[:2]
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream))
                    upstream_reader = upstream.makefile("rb")
                upstream.sendall(head + body)
                answer, answer_body = _read_message(upstream_reader, method == b"HEAD")
                if answer is None:
                    return
                if self.cut(method.decode(), path.decode()) and len(answer_body) > 1:
                    client.sendall(answer + answer_body[:len(answer_body) // 2])
                    return
                client.sendall(answer + answer_body)
        except OSError:
            pass
        finally:
            _shut(client, upstream)
            for s in (client, upstream):
                if s is not None:
                    s.close()


def _read_message(reader: Any, no_body: bool = False) -> tuple[bytes | None, bytes]:
    """One HTTP/1.1 message from `reader`: (its start line and headers, its body); (None, b"")
    at the end of the stream. Bodies by Content-Length or chunked encoding (kept as sent)."""
    lines = []
    while True:
        line = reader.readline()
        if not line:
            return None, b""
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
    head = b"".join(lines)
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.decode("latin-1").partition(":") for ln in lines[1:-1])}
    if no_body or head.split(b" ", 2)[1:2] in ([b"204"], [b"304"]):
        return head, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size_line = reader.readline()
            chunks.append(size_line)
            size = int(size_line.split(b";")[0], 16)
            chunks.append(reader.read(size + 2))
            if size == 0:
                return head, b"".join(chunks)
    return head, reader.read(int(headers.get("content-length", 0)))


class ProxyProcess:
    """A `DelayingProxy` in a process of its own, as the network it stands for is: its
    threads then share no GIL with the client's (the bench's driver). `endpoint`, `stop()`."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        root = Path(__file__).resolve().parents[2]  # `tests.support` is importable from the repository's root
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.s3server", str(upstream_port),
                                         str(delay_s)], stdout=subprocess.PIPE, text=True, cwd=root)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("http://"):
            self.process.kill()
            raise RuntimeError(f"the delaying proxy did not start: {line!r}")
        self.endpoint = line.strip()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


if __name__ == "__main__":  # the delaying proxy of ProxyProcess: UPSTREAM_PORT DELAY_S
    proxy = DelayingProxy(int(sys.argv[1]), float(sys.argv[2]))
    print(proxy.endpoint, flush=True)
    threading.Event().wait()
