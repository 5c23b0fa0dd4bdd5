"""Run the real coding-agent CLIs (Claude Code, Codex) against a local gateway, offline.

Both agents ship on npm as native binaries. :func:`agents_dir` finds or installs the pinned
releases; :func:`run_claude` and :func:`run_codex` run one non-interactive turn in an isolated
home, pointed at ``base_url``, with retries, telemetry and update checks off, and return the
finished process (the final answer is on stdout, rc 0 on success).

``base_url`` is the server root for both agents (``http://127.0.0.1:PORT``): Claude Code posts
to ``{base_url}/v1/messages?beta=true`` and Codex to ``{base_url}/v1/responses``.

See shared/agent-clients.md for what the two agents send and what they accept back.

``python -m tests.agents.clients install`` installs both into ``<repo>/.agents`` ahead of the
tests (.ci/run does, so that pytest does not pay for the download); it needs only the standard
library, so any Python 3.11 runs it before the venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"
CODEX = "@openai/codex@0.171.0"

REPO = Path(__file__).resolve().parents[2]
ENV_DIR = "POLYROUTE_AGENTS_DIR"

_NPM_TIMEOUT = 900  # seconds; the two packages are ~800 MB unpacked
_VERSION_TIMEOUT = 60


def _split_spec(spec: str) -> tuple[str, str]:
    """``"@scope/name@1.2.3"`` -> ``("@scope/name", "1.2.3")``."""
    name, _, version = spec.rpartition("@")
    return name, version


def _bin(binary_dir: Path, name: str) -> Path:
    """The agent's executable: ``node_modules/.bin/NAME`` of an npm folder, else ``NAME``."""
    npm_bin = binary_dir / "node_modules" / ".bin" / name
    return npm_bin if npm_bin.exists() else binary_dir / name


def _package_version(folder: Path, package: str) -> str | None:
    try:
        manifest = json.loads((folder / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = manifest.get("version") if isinstance(manifest, dict) else None
    return version if isinstance(version, str) else None


def _runs(executable: Path, version: str) -> bool:
    """Whether ``executable --version`` works and reports ``version``.

    Claude Code's npm wrapper only gets its native binary from a postinstall script; if npm
    skipped it (``--ignore-scripts``, an allowScripts policy), ``bin/claude.exe`` is a stub.
    """
    try:
        done = subprocess.run(
            [str(executable), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and version in done.stdout


def is_installed(folder: Path) -> bool:
    """Whether ``folder`` (an npm prefix) holds both pinned agents, and both run."""
    for spec, command in ((CLAUDE_CODE, "claude"), (CODEX, "codex")):
        package, version = _split_spec(spec)
        if _package_version(folder, package) != version:
            return False
        if not _runs(folder / "node_modules" / ".bin" / command, version):
            return False
    return True


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.install.lock`` (concurrent test workers)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_agents(folder: Path) -> bool:
    """Install both pinned agents into ``folder`` with npm, unless already there.

    Idempotent and safe to call from several processes at once (a file lock serialises the
    installs; whoever comes second finds them installed). Returns False when npm is not on
    PATH; raises RuntimeError when npm fails. A ``.gitignore`` of ``*`` is written into the
    folder so the ~800 MB never gets committed.
    """
    if is_installed(folder):
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    with _locked(folder):
        (folder / ".gitignore").write_text("*\n")
        if is_installed(folder):
            return True
        command = [
            npm,
            "install",
            "--prefix",
            str(folder),
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--save-exact",
            CLAUDE_CODE,
            CODEX,
        ]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT,
            check=False,
        )
        if done.returncode != 0 or not is_installed(folder):
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}; the agents do not run.\n"
                f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
            )
    return True


def agents_dir() -> Path | None:
    """A folder with both pinned agents installed (an npm prefix), or None without npm.

    ``$POLYROUTE_AGENTS_DIR`` wins when it is set and holds both pinned releases; otherwise
    ``<repo>/.agents``, installed there with npm on first use.
    """
    configured = os.environ.get(ENV_DIR)
    if configured and is_installed(Path(configured)):
        return Path(configured)
    folder = REPO / ".agents"
    return folder if install_agents(folder) else None


def _base_env(home: Path) -> dict[str, str]:
    """A clean environment: nothing of the caller's (API keys, proxies, agent settings) leaks.

    PATH is kept so that the agents' shell tools find bash and echo; HOME is the isolated home,
    so neither agent reads or writes the user's own config, credentials or history.
    """
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home)}
    for name in ("LANG", "LC_ALL", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _run(
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run with stdin on /dev/null, in a new process group, killed whole on timeout.

    stdin must be /dev/null: both agents otherwise wait for more prompt on an open stdin.
    The agents start shell commands of their own, which could keep the output pipes open
    after a kill of the agent alone; killing the group frees them. Raises
    ``subprocess.TimeoutExpired`` (with the output so far) if the agent itself is still
    running after ``timeout`` seconds (Claude Code waits 300 s on a stalled stream).
    """
    proc = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        agent_exited = proc.poll() is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        if not agent_exited:
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
    finally:
        # Leftover children (a command the agent started) of a finished agent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(list(command), proc.returncode, stdout, stderr)


def run_claude(
    binary_dir: Path,
    base_url: str,
    key: str,
    prompt: str,
    home: Path,
    *,
    model: str | None = None,
    timeout: float = 120,
    bearer: bool = False,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``claude -p PROMPT`` once against ``base_url``; stdout holds the final answer.

    - ``binary_dir``: what :func:`agents_dir` returned (or a folder holding ``claude``).
    - ``home``: made if missing; becomes HOME and holds ``.claude/`` (CLAUDE_CONFIG_DIR) and
      ``work/``, the default working directory.
    - ``model``: passed as ``--model``; None keeps Claude Code's default (claude-opus-5-5).
      Older models (``claude-sonnet-4-5``) get another request shape: budget thinking,
      ``max_tokens: 32000``, no ``role: "system"`` message.
    - ``bearer``: send ``key`` as ``Authorization: Bearer`` (ANTHROPIC_AUTH_TOKEN) instead of
      ``x-api-key`` (ANTHROPIC_API_KEY).
    - ``args``: more CLI arguments (``--output-format stream-json --verbose``,
      ``--allowedTools ...``); ``env``: more or overriding environment variables.

    Read-only shell commands (``echo``) and Read run without a permission flag in ``-p``.
    """
    home.mkdir(parents=True, exist_ok=True)
    config_dir = home / ".claude"
    config_dir.mkdir(exist_ok=True)
    workdir = cwd if cwd is not None else home / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    run_env = _base_env(home)
    run_env.update(
        {
            # Config, credentials, sessions and the device id go here, not in ~/.claude.
            "CLAUDE_CONFIG_DIR": str(config_dir),
            # Kept as given, path prefix included: POST {base_url}/v1/messages?beta=true.
            "ANTHROPIC_BASE_URL": base_url,
            # No telemetry, error reporting, update check or HEAD /api/hello to outside hosts.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # No retries: one failing request gives one "API Error: ..." (rc 1) at once;
            # the default retries for minutes.
            "CLAUDE_CODE_MAX_RETRIES": "0",
            # Per-request timeout; the default is minutes.
            "API_TIMEOUT_MS": "10000",
        }
    )
    # x-api-key, or Authorization: Bearer (then ANTHROPIC_API_KEY must be unset).
    run_env["ANTHROPIC_AUTH_TOKEN" if bearer else "ANTHROPIC_API_KEY"] = key
    if env:
        run_env.update(env)
    command = [str(_bin(binary_dir, "claude")), "-p", prompt]
    if model is not None:
        command += ["--model", model]
    command += list(args)
    return _run(command, run_env, workdir, timeout)


def codex_config(base_url: str, model: str) -> str:
    """The ``config.toml`` for :func:`run_codex`: a custom Responses provider, all offline."""

    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    return "\n".join(
        [
            # gpt-5.5 (or a name Codex does not know) gets the classic Responses shape; the
            # catalog "sol"/"luna" models (the default gpt-6.2-sol) move all tools into an
            # additional_tools input item meant for OpenAI only.
            f"model = {q(model)}",
            'model_provider = "gw"',
            "check_for_update_on_startup = false",
            "",
            "[model_providers.gw]",
            'name = "polyroute"',
            # Codex speaks only the Responses API: POST {base_url}/v1/responses.
            f"base_url = {q(base_url.rstrip('/') + '/v1')}",
            # The key comes from this env var, sent as Authorization: Bearer.
            'env_key = "GW_KEY"',
            'wire_api = "responses"',
            # No retries and no reconnects: one failure ends the run (rc 1) at once.
            "request_max_retries = 0",
            "stream_max_retries = 0",
            # A stalled stream fails after 5 s instead of minutes.
            "stream_idle_timeout_ms = 5000",
            "",
            # Else OTLP metrics go to an outside host.
            "[analytics]",
            "enabled = false",
            "",
            # These three stop plugin/app sync with outside hosts.
            "[features]",
            "plugins = false",
            "apps = false",
            "remote_plugin = false",
            "",
        ]
    )


def run_codex(
    binary_dir: Path,
    base_url: str,
    key: str,
    prompt: str,
    home: Path,
    *,
    model: str = "gpt-5.5",
    timeout: float = 120,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``codex exec PROMPT`` once against ``base_url``; stdout holds the final answer.

    - ``binary_dir``: what :func:`agents_dir` returned (or a folder holding ``codex``).
    - ``home``: made if missing; becomes HOME and holds ``.codex/`` (CODEX_HOME, with the
      ``config.toml`` of :func:`codex_config`) and ``work/``, the default working directory.
    - ``model``: ``gpt-5.5`` by default; an unknown name works too (a warning on stderr, and
      the request has no ``custom`` apply_patch tool, no ``text.verbosity``, and a
      ``namespace`` tool instead of ``tool_search``).
    - ``args``: more ``codex exec`` arguments (``--json``, ``--sandbox workspace-write``);
      ``env``: more or overriding environment variables.

    The transcript goes to stderr. The default sandbox is read-only: ``echo`` runs, writes
    fail. Under /tmp, Codex warns that it will not create its PATH helper aliases: harmless.
    """
    home.mkdir(parents=True, exist_ok=True)
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(base_url, model))
    workdir = cwd if cwd is not None else home / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    run_env = _base_env(home)
    # Config, auth, logs and the installation id go here, not in ~/.codex.
    run_env["CODEX_HOME"] = str(codex_home)
    run_env["GW_KEY"] = key  # env_key of the provider
    if env:
        run_env.update(env)
    command = [
        str(_bin(binary_dir, "codex")),
        "exec",
        # The work dir is no git repository; without this flag Codex refuses to start.
        "--skip-git-repo-check",
        # No session files written (rollouts) under CODEX_HOME.
        "--ephemeral",
        *args,
        prompt,
    ]
    return _run(command, run_env, workdir, timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.agents.clients install [FOLDER]``: both pinned agents into FOLDER
    (``<repo>/.agents``, where :func:`agents_dir` looks); 1 without npm, raises on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.agents.clients",
        description=f"Install the agents the tests run: {CLAUDE_CODE} and {CODEX}.",
    )
    parser.add_argument("command", choices=["install"])
    parser.add_argument("folder", nargs="?", type=Path, default=REPO / ".agents")
    folder: Path = parser.parse_args(argv).folder
    if not install_agents(folder):
        print("npm is not on PATH: nothing installed", file=sys.stderr)
        return 1
    print(f"{CLAUDE_CODE} and {CODEX} are installed in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
