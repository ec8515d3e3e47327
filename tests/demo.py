"""``make demo``: Ferry end to end on embedded defaults, no cluster and no cloud account.

Generates a block image with zero runs and a directory tree, starts a SeaweedFS S3 server on 127.0.0.1,
snapshots both with the ``ferry`` command line (configured only through the standard AWS variables),
restores both, and verifies the results byte for byte and entry for entry (modes, owners, times,
symlinks, hardlinks). Then it runs ``ferry agent`` against the tests' simulated Kubernetes cluster
through Velero's whole cycle: a DataUpload backs an application's volume up, the application's namespace
is deleted, a DataDownload restores it into a new volume handed to the application's PVC, and the data
is verified entry for entry. ``--local`` uses a repository in a local directory instead of S3 (and skips the agent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.demo_agent import run_agent_demo
from tests.support.data import make_sample_tree, tree_differences, write_mixed_image
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

MiB = 1024 * 1024


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def ferry(env: dict[str, str], *args: str) -> dict[str, object]:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"$ ferry {shown}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "agent", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"ferry failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def rate(size: object, seconds: object) -> str:
    return f"{int(size) / max(float(seconds), 1e-9) / 1e6:.0f} MB/s"  # type: ignore[call-overload]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--local", action="store_true", help="use a local directory repository, not S3")
    parser.add_argument("--image-mib", type=int, default=256, help="size of the sample block image")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
    server: SeaweedServer | None = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    try:
        step(f"generating samples in {work}")
        image = write_mixed_image(work / "volume.img", args.image_mib * MiB + 4321, seed=42)
        tree = make_sample_tree(work / "volume-tree", big_file=24 * MiB)
        print(f"block image: {image.stat().st_size} bytes (random, text, binary and zero runs, unaligned tail)")
        print(f"directory tree: {sum(1 for _ in tree.rglob('*'))} entries (symlinks, hardlinks, a sparse file, ...)")

        if args.local:
            repo = str(work / "repository")
            step(f"repository: local directory {repo}")
        else:
            step("starting a SeaweedFS S3 server on 127.0.0.1")
            server = SeaweedServer(work / "seaweedfs").start()
            bucket = asyncio.run(make_bucket(server))
            repo = f"s3://{bucket}/velero/ferry/demo"
            env.update(
                AWS_ENDPOINT_URL_S3=server.endpoint,
                AWS_ACCESS_KEY_ID=ACCESS_KEY,
                AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                AWS_REGION="us-east-1",
            )
            print(f"endpoint {server.endpoint}, repository {repo} (credentials only in AWS_* variables)")

        step("creating an encrypted repository (the password in a file: FERRY_PASSWORD_FILE)")
        password = work / "password"
        password.write_text("demo password, use your own\n")
        env["FERRY_PASSWORD_FILE"] = str(password)
        made = ferry(env, "repo", "init", "--repo", repo)
        print(f"  repository {str(made['id'])[:16]}: {made['encryption']}, format {made['format']}")

        step("snapshotting both")
        block = ferry(env, "snapshot", "create", "--repo", repo, str(image))
        print(f"  block snapshot {block['snapshot_id']}  {rate(block['size'], block['seconds'])}")
        fs = ferry(env, "snapshot", "create", "--repo", repo, str(tree))
        print(f"  filesystem snapshot {fs['snapshot_id']}  {rate(fs['size'], fs['seconds'])}")
        again = ferry(env, "snapshot", "create", "--repo", repo, str(image))
        print(f"  the image again: {again['new_chunks']} new chunks, {again['reused_chunks']} reused (deduplicated)")
        listed = ferry(env, "snapshot", "list", "--repo", repo)
        print(f"  the repository lists {len(listed)} snapshots")  # type: ignore[arg-type]

        step("restoring both")
        restored_image = work / "restored.img"
        r1 = ferry(env, "restore", "--repo", repo, "--snapshot", str(block["snapshot_id"]), str(restored_image))
        print(f"  block: {r1['total_bytes']} bytes, {rate(r1['total_bytes'], r1['seconds'])}, every chunk verified")
        restored_tree = work / "restored-tree"
        r2 = ferry(env, "restore", "--repo", repo, "--snapshot", str(fs["snapshot_id"]), str(restored_tree))
        print(f"  tree: {r2['total_bytes']} bytes, {rate(r2['total_bytes'], r2['seconds'])}, every chunk verified")

        step("verifying")
        if restored_image.read_bytes() != image.read_bytes():
            sys.exit("FAILED: the restored image differs from the original")
        print("  block image: identical, byte for byte")
        diffs = tree_differences(tree, restored_tree)
        if diffs:
            sys.exit("FAILED: the restored tree differs:\n  " + "\n  ".join(diffs[:20]))
        print("  directory tree: identical content, types, modes, owners, mtimes, symlinks and hardlinks")

        if server is not None:
            step("the node agent: a Velero backup and restore through `ferry agent`")
            asyncio.run(run_agent_demo(server.endpoint, bucket, tree, work))
        else:
            step("the node agent part needs the S3 server: run without --local to see it")

        step("done")
        print(f"block snapshot:      {block['snapshot_id']}")
        print(f"filesystem snapshot: {fs['snapshot_id']}")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
