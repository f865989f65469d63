"""Time from exec to the first served request, over several runs (prints median and max in ms)."""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN, RUNS = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15
PORT = 18481


def served():
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=0.05) as s:
            s.sendall(b"GET /fhir/metadata HTTP/1.0\r\nHost: x\r\n\r\n")
            return s.recv(16)[8:13] == b" 200 "
    except OSError:
        return False


times = []
for _ in range(RUNS):
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, CAREPLANE_LISTEN_ADDR=f"127.0.0.1:{PORT}", CAREPLANE_ADMIN_ADDR="127.0.0.1:0",
                   CAREPLANE_LOG="warn")
        start = time.perf_counter()
        proc = subprocess.Popen([BIN], cwd=d, env=env, stderr=subprocess.DEVNULL)
        while not served():
            time.sleep(0.0005)
        times.append((time.perf_counter() - start) * 1000)
        proc.terminate()
        proc.wait()
print(f"startup to first served request: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms ({RUNS} runs, fresh SQLite each)")
