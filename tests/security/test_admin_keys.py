"""The appliance's admin key: rotation through the deployment file, with `streamcdn serve`."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port, streamcdn_cmd, wait_for_port

OLD = "the-old-admin-key-0123456789"
NEW = "the-new-admin-key-9876543210"


def admin_status(port: int, key: str) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/cache", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_admin_keys_rotate_through_the_deployment_file(tmp_path: Path) -> None:
    """`admin = [NEW, OLD]`: both open /admin while tools move to the new key; anything else
    is 401. Then `admin = NEW` alone: the old key is refused."""
    port = free_port()
    for admin, accepted, refused in (
        (f'["{NEW}", "{OLD}"]', (NEW, OLD), ("not-an-admin-key-0123456",)),
        (f'"{NEW}"', (NEW,), (OLD,)),
    ):
        (tmp_path / "deploy.toml").write_text(f"""
[keys]
signing = ["k1:security-test-signing-key-0123"]
admin = {admin}
[origin]
url = "http://127.0.0.1:9"
[[sites]]
name = "s"
cidrs = ["127.0.0.0/8"]
[[appliances]]
id = "a1"
url = "http://127.0.0.1:{port}"
site = "s"
capacity_mbps = 100
cache_dir = "cache"
""")
        cmd = streamcdn_cmd("serve", "appliance", "--config", str(tmp_path / "deploy.toml"))
        proc = subprocess.Popen(
            [*cmd, "--id", "a1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_for_port(port, proc)
            assert [admin_status(port, k) for k in accepted] == [200] * len(accepted)
            assert [admin_status(port, k) for k in refused] == [401] * len(refused)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            assert proc.stderr is not None
            proc.stderr.close()
