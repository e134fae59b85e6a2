"""The display's keeper, run by Python INSIDE the command sandbox (never imported by mailagent).

In: argv[1], JSON: the display number, the screen's size and the environment of the programs
it starts (the sandbox's, from the host: nothing of the service's); then one JSON request a line on
stdin: {"run": argv, "timeout": s} runs a program (xdotool, xwd) to its end, {"spawn": argv}
starts an application and returns at once. Out: one JSON answer a line on stdout, first
{"ready": true} once the X server listens. Side effects: starts Xvfb on the sandbox's private
/tmp, and the programs the host asks for, each with DISPLAY set to that server alone.
It decides nothing: which program runs is decided by mailagent outside the sandbox, and what
comes back is only data to it. The standard library only: it runs from its source text, with
nothing of mailagent importable in the sandbox.
"""

import base64
import json
import os
import subprocess
import sys
import time

MAX_OUTPUT_BYTES = 16 * 1024 * 1024
READY_SECONDS = 15.0


def main() -> None:
    config = json.loads(sys.argv[1])
    number = int(config["display"])
    env = {**config["env"], "DISPLAY": f":{number}"}
    screen = f"{int(config['width'])}x{int(config['height'])}x24"
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", screen, "-nolisten", "tcp",
                               "-noreset"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = f"/tmp/.X11-unix/X{number}"
    deadline = time.monotonic() + READY_SECONDS
    while not os.path.exists(socket) and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not os.path.exists(socket):
        answer({"error": f"the X server did not start (exit code {server.poll()})"})
        return
    answer({"ready": True})
    apps: list[subprocess.Popen[bytes]] = []
    for line in sys.stdin:
        request = json.loads(line)
        if "spawn" in request:
            try:
                apps.append(subprocess.Popen(request["spawn"], env=env, cwd=request.get("cwd"),
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
            except OSError as exc:
                answer({"error": f"{request['spawn'][0]} did not start: {exc}"})
                continue
            time.sleep(float(request.get("settle", 0)))
            answer({"pid": apps[-1].pid, "exit_code": apps[-1].poll()})
        else:
            answer(run(request["run"], float(request.get("timeout", 10)), env))


def run(argv: list[str], timeout: float, env: dict[str, str]) -> dict[str, object]:
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"{argv[0]} did not finish in {timeout:g} s"}
    except OSError as exc:
        return {"error": f"{argv[0]} did not start: {exc}"}
    return {"exit_code": done.returncode,
            "stdout": base64.b64encode(done.stdout[:MAX_OUTPUT_BYTES]).decode("ascii"),
            "stderr": done.stderr[:2000].decode(errors="replace")}


def answer(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
