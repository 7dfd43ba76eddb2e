#!/usr/bin/env python3
"""test_llama_server.py - llama-server with --kv-evict (make test-llama-server).

    tests/test_llama_server.py --server BUILD/llama-server --model FILE.gguf
                               [--rpc-server BUILD/ggml-rpc-server] [--threads N]

Starts the patched llama-server (examples/llama.cpp/kvec-server.patch) on
127.0.0.1 with SmolLM2 and checks what a user would see:

- a chat completion whose prompt is a document and a question gets the
  document's answer with the cache evicted to 50% after the prompt, and
  /slots reports the slot holding half of the prompt's cells per KV head;
- a second request reads its prompt from position 0 again (no prefix
  reused from the evicted sequence) and is evicted in turn;
- two requests sent at once are both answered (one slot: the second waits);
- a global budget (heads of different lengths, with the per-head patch)
  answers, and so does the next request after it;
- the learned scores (--kv-evict learned:25%, learned-kvec:25%; the
  model's scorer from the checkout's scorers/, read while the prompt is
  decoded): the answer at a quarter of the cache, /slots reporting a
  global budget's mean of a quarter of the prompt per KV head, and a
  second request evicted in turn; a scorer for another model, a missing
  scorer file, and --kv-evict-scorer with a policy that reads no scorer
  are refused at start;
- with --rpc-server: the same request with every layer on an rpc-server
  (llama.cpp's RPC backend) and flash attention off (V transposed) gets the
  same answer and the same eviction, the kept rows moved inside the
  server's buffers;
- bad --kv-evict values and options the patch cannot serve: the server
  exits at start with a non-zero status and a message naming the problem.

Only the Python standard library. Each server's log is kept in a temporary
folder and its tail printed when a check fails.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

DOCUMENT = "examples/demo/lighthouse.txt"
QUESTION = "Who kept the light on Gull Point for thirty-one years?"
ANSWER = "Pellow"
INSTRUCTION = "Read the document below, then answer the question after it in a few words.\n\n"

SMOLLM2_SCORER = "scorers/SmolLM2-135M-Instruct.Q4_1.kvs"
QWEN_SCORER = "scorers/Qwen2.5-Coder-0.5B-Instruct.kvs"

passed = failed = 0


def check(ok, what, log=None):
    global passed, failed
    print(("pass: " if ok else "FAIL: ") + what, flush=True)
    if ok:
        passed += 1
        return
    failed += 1
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = f.read().splitlines()[-15:]
        print("    server log, last lines:\n" + "\n".join("    " + line for line in tail))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, body=None, timeout=600):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Server:
    """One llama-server process; stopped when the block ends."""

    def __init__(self, args, logdir, name):
        self.port = free_port()
        self.log = os.path.join(logdir, name + ".log")
        self.cmd = args + ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = None

    def __enter__(self):
        self.log_file = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"llama-server exited with status {self.proc.returncode} (log {self.log})")
            try:
                if request(self.port, "/health", timeout=5).get("status") == "ok":
                    return self
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama-server did not become ready in 300 s (log {self.log})")

    def __exit__(self, *exc):
        stop(self.proc)
        self.log_file.close()


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def section(name, run):
    """Runs one part of the test; an exception (a server that does not
    start, an HTTP error) fails it with its message and the rest go on."""
    try:
        run()
    except Exception as e:
        check(False, f"{name}: {type(e).__name__}: {e}")


def ask(port, document, question=QUESTION):
    body = {"messages": [{"role": "user", "content": INSTRUCTION + document + "\n\nQuestion: " + question}],
            "temperature": 0, "max_tokens": 32}
    reply = request(port, "/v1/chat/completions", body)
    return reply["choices"][0]["message"]["content"], reply


def slot_eviction(port):
    slots = request(port, "/slots")
    return slots[0].get("kv_evict") if slots else None


def evicted_to_half(ev, what, log):
    ok = (ev is not None and ev["cells_per_head"] == ev["prompt_tokens"] // 2 and
          ev["cells_per_head_mean"] == ev["cells_per_head"] and ev["prompt_tokens"] > 1000)
    check(ok, f"{what}: /slots reports {ev and ev['cells_per_head']} of {ev and ev['prompt_tokens']} cells per KV head "
              f"held after the prompt (50%), eviction {ev and round(ev['ms'], 1)} ms", log)


def evicted_globally(ev, fraction, what, log):
    """A global budget: heads of different lengths, their mean the budget."""
    budget = int(fraction * ev["prompt_tokens"]) if ev else 0
    ok = (ev is not None and ev["prompt_tokens"] > 1000 and abs(ev["cells_per_head_mean"] - budget) <= 1 and
          budget <= ev["cells_per_head"] <= ev["prompt_tokens"])
    check(ok, f"{what}: /slots reports a mean of {ev and ev['cells_per_head_mean']} cells per KV head "
              f"(budget {budget}), the longest head {ev and ev['cells_per_head']}, of {ev and ev['prompt_tokens']}", log)


def start_refused(server, model, extra, text, logdir, name):
    """The server must exit at start, non-zero, with text in its output."""
    log = os.path.join(logdir, name + ".log")
    cmd = [server, "-m", model, "--host", "127.0.0.1", "--port", str(free_port())] + extra
    try:
        run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        out = run.stdout.decode(errors="replace")
        status = run.returncode
    except subprocess.TimeoutExpired:
        out, status = "(still running after 120 s)", 0
    with open(log, "w") as f:
        f.write(out)
    last = [line for line in out.splitlines() if "kv-evict" in line][-1:] or out.splitlines()[-1:]
    check(status != 0 and text.lower() in out.lower(),
          f"refused at start: {' '.join(extra)} (status {status}; says: {last[0].strip() if last else ''})", log)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rpc-server")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    for path in [a.server, a.model, DOCUMENT] + ([a.rpc_server] if a.rpc_server else []):
        if not os.path.exists(path):
            sys.exit(f"test_llama_server: {path} not found")
    with open(DOCUMENT) as f:
        document = f.read()
    logdir = tempfile.mkdtemp(prefix="kvec-llama-server-")
    base = [a.server, "-m", a.model, "-c", "4096", "-np", "1", "-t", str(a.threads), "-tb", str(a.threads)]
    started = time.time()

    # bad values and options the patch cannot serve: refused before the model loads
    for extra, text, name in [
            (["--kv-evict", "bogus"], "POLICY:BUDGET", "bad-format"),
            (["--kv-evict", "nosuch:0.5"], "unknown policy", "bad-policy"),
            (["--kv-evict", "kvec:0"], "above 0", "budget-zero"),
            (["--kv-evict", "kvec:1.5"], "more than the whole prompt", "budget-over"),
            (["--kv-evict", "kvec:16"], "below the window", "budget-window"),
            (["--kv-evict", "kvec:0.5:sideways"], "unknown budget mode", "bad-mode"),
            (["--kv-evict", "kvec:0.5:"], "POLICY:BUDGET", "trailing-colon"),
            (["--kv-evict", "kvec:0.5", "-np", "2"], "one slot", "two-slots"),
            (["--kv-evict", "kvec:0.5", "--context-shift"], "context-shift", "ctx-shift"),
            (["--kv-evict", "kvec:0.5", "--cache-reuse", "256"], "cache-reuse", "cache-reuse"),
            (["--kv-evict", "kvec:0.5", "-ctk", "q8_0"], "q8_0", "quantised"),
            (["--kv-evict", "kvec:0.5", "--kv-evict-scorer", SMOLLM2_SCORER], "learned-kvec only", "scorer-unread"),
            (["--kv-evict-scorer", SMOLLM2_SCORER], "without --kv-evict", "scorer-alone"),
            (["--kv-evict", "learned:0.5", "--kv-evict-scorer", os.path.join(logdir, "none.kvs")],
             "cannot open the scorer", "scorer-missing"),
            (["--kv-evict", "learned:0.5", "--kv-evict-scorer", QWEN_SCORER], "trained for another model",
             "scorer-other-model")]:
        start_refused(a.server, a.model, extra, text, logdir, name)

    section("50% on the host", lambda: host_checks(base, logdir, document))
    section("global budget", lambda: global_checks(base, logdir, document))
    section("learned scores", lambda: learned_checks(base, logdir, document))
    if a.rpc_server:
        section("RPC", lambda: rpc_checks(base, logdir, document, a.rpc_server, a.threads))
    else:
        print("skip: RPC (no --rpc-server)")

    print(f"test_llama_server: {passed} passed, {failed} failed in {time.time() - started:.0f} s (logs in {logdir})")
    return 1 if failed else 0


def host_checks(base, logdir, document):
    """Eviction at 50% on the host: answers, cells held, a second request, two at once."""
    with Server(base + ["--kv-evict", "kvec:0.5"], logdir, "kvec-50") as srv:
        answer, reply = ask(srv.port, document)
        check(ANSWER.lower() in answer.lower(), f"50% K-VEC: the answer names the keeper ({answer.strip()!r})", srv.log)
        evicted_to_half(slot_eviction(srv.port), "50% K-VEC", srv.log)
        answer2, reply2 = ask(srv.port, document, "What colour was the lighthouse painted?")
        timings = reply2.get("timings", {})
        check(timings.get("cache_n", -1) == 0 and timings.get("prompt_n", 0) == reply2["usage"]["prompt_tokens"],
              f"a second request reads its whole prompt again (cache_n {timings.get('cache_n')}, "
              f"prompt_n {timings.get('prompt_n')}) and is answered ({answer2.strip()!r})", srv.log)
        evicted_to_half(slot_eviction(srv.port), "the second request", srv.log)
        answers = [None, None]

        def worker(i):
            try:
                answers[i] = ask(srv.port, document)[0]
            except Exception as e:  # reported by the check below
                answers[i] = f"error: {e}"
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(all(x and ANSWER.lower() in x.lower() for x in answers),
              f"two requests at once on one slot are both answered ({[x.strip() if x else x for x in answers]})",
              srv.log)
        check(srv.proc.poll() is None, "the server is still running", srv.log)



def global_checks(base, logdir, document):
    """A global budget (heads of different lengths, the per-head patch): the
    limits one prompt leaves must not mask the next prompt."""
    with Server(base + ["--kv-evict", "kvec:0.5:global"], logdir, "kvec-50-global") as srv:
        answer, _ = ask(srv.port, document)
        check(ANSWER.lower() in answer.lower(),
              f"50% K-VEC, global budget: the answer names the keeper ({answer.strip()!r})", srv.log)
        evicted_globally(slot_eviction(srv.port), 0.5, "50% K-VEC, global budget", srv.log)
        answer2, _ = ask(srv.port, document, "What colour was the lighthouse painted?")
        check("white" in answer2.lower(),
              f"global budget, a second request after heads of different lengths: answered ({answer2.strip()!r})",
              srv.log)



def learned_checks(base, logdir, document):
    """The learned scorer (docs/LEARNED.md) at a quarter of the cache, by
    its scores alone and with K-VEC's uniqueness term: one global budget
    with the per-head patch, the scorer found in the checkout's scorers/."""
    for policy in ("learned", "learned-kvec"):
        with Server(base + ["--kv-evict", policy + ":25%"], logdir, policy + "-25") as srv:
            answer, _ = ask(srv.port, document)
            check(ANSWER.lower() in answer.lower(),
                  f"25% {policy}: the answer names the keeper ({answer.strip()!r})", srv.log)
            evicted_globally(slot_eviction(srv.port), 0.25, f"25% {policy}", srv.log)
            # another prompt (another length): scored and evicted on its own
            answer2, reply2 = ask(srv.port, document, "What colour was the lighthouse painted?")
            ev2 = slot_eviction(srv.port)
            check(answer2.strip() != "" and ev2 is not None and
                  ev2["prompt_tokens"] == reply2["usage"]["prompt_tokens"],
                  f"25% {policy}, a second request of {reply2['usage']['prompt_tokens']} tokens is evicted in turn "
                  f"and answered ({answer2.strip()!r}; the full cache says white)", srv.log)
            evicted_globally(ev2, 0.25, f"25% {policy}, the second request", srv.log)
            with open(srv.log, errors="replace") as f:
                loaded = any(policy + ":25%" in line for line in f)
            check(loaded and srv.proc.poll() is None, f"{policy}: the server logged its --kv-evict and runs on",
                  srv.log)


def rpc_checks(base, logdir, document, rpc_server, threads):
    """Every layer on an rpc-server, flash attention off (V transposed, the
    other layout from the host run's, where auto turns it on)."""
    rpc_port = free_port()
    rpc_log = os.path.join(logdir, "rpc-server.log")
    with open(rpc_log, "w") as rpc_log_file:
        rpc = subprocess.Popen([rpc_server, "-H", "127.0.0.1", "-p", str(rpc_port), "-t", str(threads)],
                               stdout=rpc_log_file, stderr=subprocess.STDOUT)
        try:
            for _ in range(300):
                if rpc.poll() is not None:
                    raise RuntimeError(f"rpc-server exited with status {rpc.returncode} (log {rpc_log})")
                try:
                    socket.create_connection(("127.0.0.1", rpc_port), 0.5).close()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError(f"rpc-server did not accept connections in 30 s (log {rpc_log})")
            # -lv 4: the log then says where the weights and the KV cache went
            with Server(base + ["--kv-evict", "kvec:0.5", "--rpc", f"127.0.0.1:{rpc_port}", "-ngl", "99", "-fa", "off",
                                "-lv", "4"], logdir, "kvec-50-rpc") as srv:
                answer, _ = ask(srv.port, document)
                check(ANSWER.lower() in answer.lower(),
                      f"RPC, every layer on an rpc-server, 50% K-VEC: the answer names the keeper ({answer.strip()!r})",
                      srv.log)
                evicted_to_half(slot_eviction(srv.port), "RPC", srv.log)
                with open(srv.log, errors="replace") as f:
                    kv_lines = [line.strip() for line in f if "llama_kv_cache:" in line and "KV buffer size" in line]
                with open(srv.log, errors="replace") as f:
                    moved = [line.strip() for line in f if "--kv-evict: kept" in line]
                n_moved = re.search(r"(\d+) layers' rows moved inside device buffers", moved[-1]) if moved else None
                check(n_moved is not None and int(n_moved.group(1)) > 0,
                      f"RPC: the kept rows moved inside the rpc-server's buffers "
                      f"({moved[-1].split('--kv-evict: ')[1] if moved else 'no eviction line in the log'})", srv.log)
                check(len(kv_lines) == 1 and "RPC" in kv_lines[0],
                      f"RPC: the whole KV cache is in the rpc-server's memory "
                      f"({kv_lines[0].split('llama_kv_cache:')[1].strip() if kv_lines else 'no KV buffer line in the log'})",
                      srv.log)
        finally:
            stop(rpc)


if __name__ == "__main__":
    sys.exit(main())
