"""A private Postfix instance that relays to the sink through its queue: the MTA comparison.

Own config_directory, queue_directory and data_directory under a temporary directory; started
and stopped with `postfix -c DIR start|stop`. Needs root (Postfix drops to the postfix user).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"

# No chroot: a chrooted daemon would need copies of /etc files inside the private queue.
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.7
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-relay.bench
mydomain = bench
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mynetworks_style = host
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
smtputf8_enable = no
maillog_file = {log}
maillog_file_prefixes = {base}
"""


class PostfixRelay:
    """One private instance; `start()` returns when it answers SMTP, `stop()` is idempotent."""

    def __init__(self, base: Path, listen_port: int, relay_port: int) -> None:
        self.base = base
        self.listen_port = listen_port
        self.relay_port = relay_port
        self.config_dir = base / "etc"
        self.queue_dir = base / "queue"
        self.data_dir = base / "data"
        self.log_file = base / "postfix.log"
        self.started = False

    def write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        # maillog_file is written by postlogd as the postfix user.
        os.chmod(self.base, 0o755)
        self.log_file.touch()
        os.chown(self.log_file, postfix_user.pw_uid, postfix_user.pw_gid)
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.listen_port}"))
        (self.config_dir / "main.cf").write_text(
            MAIN_CF.format(
                queue=self.queue_dir,
                data=self.data_dir,
                relay_port=self.relay_port,
                log=self.log_file,
                base=self.base,
            )
        )
        grp.getgrnam("postdrop")  # fails early with a clear KeyError when the package is incomplete

    def _postfix(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        # Postfix prints fatal start-up errors only to a terminal: `script` gives it one.
        command = f"{POSTFIX} -c {self.config_dir} {action}"
        return subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        result = self._postfix("start", timeout)
        self.started = True
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed ({result.returncode}): {result.stdout.strip()} {self.log_tail()}")

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def wait_master(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.master_pid()
            if pid is not None and Path(f"/proc/{pid}").exists():
                return pid
            time.sleep(0.05)
        raise RuntimeError(f"postfix master did not start within {timeout}s: {self.log_tail()}")

    def queue_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            d = self.queue_dir / sub
            if d.exists() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        try:
            self._postfix("stop", timeout)
        except subprocess.TimeoutExpired:
            pass
        # `postfix stop` returns before master has exited; kill it if it lingers.
        if pid is not None:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
