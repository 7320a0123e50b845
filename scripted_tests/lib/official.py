#!/usr/bin/env python3
"""Drive the official AWS Deadline Cloud job-attachments client (PyPI `deadline` 0.60.10) against
a local S3 endpoint, as a submitter and as a worker would, for interop tests.

Run it with the venv's python (scripted_tests/lib/deadline_venv.sh exports DEADLINE_PY):

  official.py upload   --bucket B --root-prefix P --farm-id F --queue-id Q
                       [--output-dir D]... INPUT... [-o attachments.json]
  official.py download --bucket B --root-prefix P --farm-id F --queue-id Q
                       --attachments FILE --dest DIR [--job-id J [--step-dependency STEP]...]
                       [-o mapping.json]
  official.py task     --bucket B --root-prefix P --farm-id F --queue-id Q --attachments FILE
                       --dest DIR --job-id J --step-id S --task-id T --session-action-id SA
                       [--step-dependency STEP]... [--render REL=SRC]...
  official.py manifest-bytes --bucket B --key K -o FILE
  official.py ls       --bucket B [--prefix P] [--metadata]

upload   What a submitter does (`deadline bundle submit`, client/api/_submit_job_bundle.py):
         every INPUT directory is expanded with os.walk into its files (an empty directory
         becomes a referenced path), then
           S3AssetManager(farm_id, queue_id, JobAttachmentS3Settings(bucket, rootPrefix))
           .prepare_paths_for_upload(input_paths=files, output_paths=--output-dir,
                                     referenced_paths=empty dirs)
           .hash_assets_and_create_manifest(..., hash_cache_dir=<fresh temp dir>)
           .upload_assets(manifests, s3_check_cache_dir=<fresh temp dir>)
         and writes Attachments.to_dict() (the CreateJob `attachments` payload) to -o
         (or stdout). Grouping is the official one: on POSIX every input and output path falls in
         one group (top directory "/"), whose rootPath is os.path.commonpath of all inputs,
         outputs and referenced paths, or its parent when that common path is a file (so a
         single file input gets rootPath = its directory). outputRelativeDirectories are the
         --output-dir paths relative to rootPath ("." for the root itself); without
         --output-dir the key is absent.
download What a worker does before a task (deadline-cloud-worker-agent ->
         AssetSync.attachment_sync_inputs; no Deadline API call, the queue's settings are passed
         in): each manifest root goes to DIR/assetroot-<shake_256(rootPath).hexdigest(10)>, every
         input manifest is fetched from {rootPrefix}/Manifests/{inputManifestPath}, manifests of
         the same root are merged, files are fetched from {rootPrefix}/Data/{hash}.xxh128 and get
         the manifest mtime (os.utime with float seconds, so it may land 1 us off). Prints
         (or writes to -o) the path-mapping rules: [{"source_path_format","source_path",
         "destination_path"}].
         With --step-dependency STEP (repeatable, and --job-id): the outputs of that step are
         synced over the inputs too (step_dependencies=[...]: each task's latest session action,
         every root in DIR/assetroot-<shake_256(root)>).
task     A worker's whole task in one AssetSync: download as above (--step-dependency too), then
         --render REL=SRC copies SRC (content and mtime) to REL under the first root, then
         AssetSync.sync_outputs(step, task, session action) hashes and uploads the new files and
         publishes the task's output manifest.
manifest-bytes  GET one object and write its exact bytes to -o; prints a JSON line with key,
         size, ETag, user metadata and xxh128 of the bytes.
ls       List keys under a prefix as JSON lines (with --metadata: HEAD each for its user metadata).

Safety: refuses to run unless AWS_ENDPOINT_URL points at a loopback address; a Python audit hook
refuses every socket connection that is not to loopback; AWS_ACCOUNT_ID must be set so the client
never calls STS for the bucket-owner check; every AWS call is counted per service and operation
and printed to stderr (each call in order with OFFICIAL_TRACE_CALLS=1), and any call to a
service other than S3 is an error. The client's hash
cache, S3 check cache and config file go to a temp dir, never to ~/.deadline.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

CALLS: Counter = Counter()
_TMP = tempfile.TemporaryDirectory(prefix="attache-official-")


def die(msg: str, code: int = 2) -> NoReturn:
    print(f"official.py: {msg}", file=sys.stderr)
    sys.exit(code)


def _is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guard_network() -> None:
    """Only loopback endpoints; fail loudly on anything else (the official client must never
    reach AWS from a test)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    host = urlparse(endpoint).hostname or ""
    if not endpoint or not _is_loopback_host(host):
        die(f"AWS_ENDPOINT_URL must point at a local S3 server (got {endpoint!r}); "
            "source the env.sh written by scripted_tests/garage.sh start")
    for var in ("AWS_ENDPOINT_URL_S3",):
        v = os.environ.get(var)
        if v and not _is_loopback_host(urlparse(v).hostname or ""):
            die(f"{var}={v!r} is not a loopback endpoint")
    if not os.environ.get("AWS_ACCOUNT_ID"):
        die("AWS_ACCOUNT_ID must be set (else the client calls STS to find the bucket owner)")
    # Keep the client away from the user's AWS and Deadline configuration.
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_DEFAULT_PROFILE", None)
    os.environ.setdefault("AWS_CONFIG_FILE", os.devnull)
    os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["DEADLINE_CONFIG_FILE_PATH"] = os.path.join(_TMP.name, "deadline-config")

    def audit(event: str, args: tuple) -> None:
        if event != "socket.connect":
            return
        sock, addr = args[0], args[1]
        if getattr(sock, "family", None) == socket.AF_UNIX:
            return
        host = addr[0] if isinstance(addr, tuple) and addr else str(addr)
        if not _is_loopback_host(str(host)):
            raise ConnectionRefusedError(f"official.py: refusing non-loopback connection to {addr!r}")

    sys.addaudithook(audit)


def _count_calls() -> None:
    """Count every botocore API call (service.operation) made by the official client."""
    from deadline.job_attachments._aws.aws_clients import get_boto3_session

    trace = os.environ.get("OFFICIAL_TRACE_CALLS") == "1"

    def before_call(model, params, **_kw):
        CALLS[f"{model.service_model.service_name}.{model.name}"] += 1
        if trace:
            print(f"official.py: call {model.service_model.service_name}.{model.name} "
                  f"{params.get('Key', params.get('Prefix', ''))}", file=sys.stderr)

    # Clients copy the session's event hooks when they are created: register first.
    get_boto3_session()._session.register("before-parameter-build", before_call)


def _check_account_id() -> None:
    from deadline.job_attachments._aws.aws_clients import get_boto3_session

    creds = get_boto3_session().get_credentials()
    if creds is None:
        die("no AWS credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if not getattr(creds.get_frozen_credentials(), "account_id", None):
        die("botocore did not pick AWS_ACCOUNT_ID up from the environment; the client would call STS")


def _report_calls() -> None:
    if CALLS:
        summary = ", ".join(f"{k}={v}" for k, v in sorted(CALLS.items()))
        print(f"official.py: AWS calls: {summary}", file=sys.stderr)
    others = [k for k in CALLS if not k.startswith("s3.")]
    if others:
        die(f"the official client called non-S3 services: {others}", 3)


def _s3_settings(args):
    from deadline.job_attachments.models import JobAttachmentS3Settings

    return JobAttachmentS3Settings(s3BucketName=args.bucket, rootPrefix=args.root_prefix)


def _write_json(obj, out: str | None) -> None:
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    if out and out != "-":
        Path(out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _expand_inputs(inputs: list[str], allow_missing: bool = False) -> tuple[list[str], list[str]]:
    """Files stay; directories become their files (os.walk), as the submitter expands
    input directories. Empty directories become referenced paths. A missing path is an
    error, or with allow_missing an input left for the client to refer to (its default)."""
    files: set[str] = set()
    referenced: set[str] = set()
    for p in inputs:
        if os.path.isdir(p):
            empty = True
            for root, _dirs, names in os.walk(p):
                if names:
                    empty = False
                    files.update(os.path.normpath(os.path.join(root, n)) for n in names)
            if empty:
                referenced.add(p)
        elif os.path.exists(p) or allow_missing:
            files.add(p)
        else:
            die(f"input does not exist: {p}")
    return sorted(files), sorted(referenced)


def cmd_upload(args) -> int:
    from deadline.job_attachments.upload import S3AssetManager

    inputs, outputs, bundle_referenced = list(args.inputs), list(args.output_dir), []
    if args.asset_references:
        # As create_job_from_job_bundle reads a bundle's asset references and applies its
        # template's job parameters (its own loader and functions).
        from deadline.client.job_bundle.loader import read_yaml_or_json_object
        from deadline.client.job_bundle.parameters import (apply_job_parameters,
                                                           read_job_bundle_parameters)
        from deadline.client.job_bundle.submission import AssetReferences

        bundle = args.asset_references
        has_template = any(os.path.isfile(os.path.join(bundle, f"template.{ext}"))
                           for ext in ("json", "yaml"))
        refs = AssetReferences.from_dict(
            read_yaml_or_json_object(bundle, "asset_references", required=not has_template)
        )
        if has_template:
            given = [dict(zip(("name", "value"), p.split("=", 1))) for p in args.parameter]
            apply_job_parameters(given, bundle, read_job_bundle_parameters(bundle), refs)
        inputs += sorted(refs.input_filenames) + sorted(refs.input_directories)
        outputs += sorted(refs.output_directories)
        bundle_referenced = sorted(refs.referenced_paths)
    if not inputs and not outputs:
        die("upload: give INPUT paths or --asset-references")
    files, referenced = _expand_inputs(inputs, args.allow_missing)
    referenced = sorted(set(referenced) | set(bundle_referenced))
    manager = S3AssetManager(
        farm_id=args.farm_id,
        queue_id=args.queue_id,
        job_attachment_settings=_s3_settings(args),
    )
    group = manager.prepare_paths_for_upload(
        input_paths=files,
        output_paths=sorted(set(outputs)),
        referenced_paths=referenced,
        require_paths_exist=not args.allow_missing,
    )
    hash_cache = args.hash_cache_dir or os.path.join(_TMP.name, "hash-cache")
    s3_check_cache = args.s3_check_cache_dir or os.path.join(_TMP.name, "s3-check-cache")
    os.makedirs(hash_cache, exist_ok=True)
    os.makedirs(s3_check_cache, exist_ok=True)
    hash_summary, manifests = manager.hash_assets_and_create_manifest(
        asset_groups=group.asset_groups,
        total_input_files=group.total_input_files,
        total_input_bytes=group.total_input_bytes,
        hash_cache_dir=hash_cache,
        on_preparing_to_submit=lambda _m: True,
    )
    upload_summary, attachments = manager.upload_assets(
        manifests=manifests,
        on_uploading_assets=lambda _m: True,
        s3_check_cache_dir=s3_check_cache,
    )
    result = attachments.to_dict()
    _write_json(result, args.output)
    print(
        "official.py: upload: "
        + json.dumps({
            "roots": [m["rootPath"] for m in result["manifests"]],
            "files": hash_summary.total_files,
            "bytes": hash_summary.total_bytes,
            "uploaded_files": upload_summary.processed_files,
            "uploaded_bytes": upload_summary.processed_bytes,
            "skipped_files": upload_summary.skipped_files,
        }),
        file=sys.stderr,
    )
    return 0


def _attachments(path: str):
    from deadline.job_attachments.models import Attachments, ManifestProperties

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    # The CreateJob payload, or a GetJob response holding it under "attachments".
    if "manifests" not in data and "attachments" in data:
        data = data["attachments"]
    return Attachments(
        manifests=[ManifestProperties.from_dict(m) for m in data["manifests"]],
        fileSystem=data.get("fileSystem", "COPIED"),
    )


def _sync_inputs(args, sync, attachments, dest: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        summary, rules = sync.attachment_sync_inputs(
            s3_settings=_s3_settings(args),
            attachments=attachments,
            queue_id=args.queue_id,
            job_id=args.job_id,
            session_dir=dest,
            step_dependencies=args.step_dependency or None,
        )
    print(
        "official.py: download: "
        + json.dumps({
            "files": summary.total_files,
            "bytes": summary.total_bytes,
            "downloaded_files": summary.processed_files,
            "downloaded_bytes": summary.processed_bytes,
        }),
        file=sys.stderr,
    )
    return rules


def cmd_download(args) -> int:
    from deadline.job_attachments.asset_sync import AssetSync

    dest = Path(args.dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    rules = _sync_inputs(args, AssetSync(farm_id=args.farm_id), _attachments(args.attachments), dest)
    _write_json(rules, args.output)
    return 0


def cmd_task(args) -> int:
    import shutil
    import time

    from deadline.job_attachments.asset_sync import AssetSync

    dest = Path(args.dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    attachments = _attachments(args.attachments)
    # One AssetSync for both syncs: sync_outputs finds outputs by the mtimes sync_inputs recorded.
    sync = AssetSync(farm_id=args.farm_id)
    start_time = time.time()
    rules = _sync_inputs(args, sync, attachments, dest)
    local_root = Path(rules[0]["destination_path"])
    for spec in args.render:
        rel, src = spec.split("=", 1)
        target = local_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)  # content and mtime: the "render"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        summary = sync.sync_outputs(
            s3_settings=_s3_settings(args),
            attachments=attachments,
            queue_id=args.queue_id,
            job_id=args.job_id,
            step_id=args.step_id,
            task_id=args.task_id,
            session_action_id=args.session_action_id,
            start_time=start_time,
            session_dir=dest,
        )
    print(
        "official.py: task: outputs "
        + json.dumps({"files": summary.processed_files, "bytes": summary.processed_bytes}),
        file=sys.stderr,
    )
    return 0


def cmd_manifest_bytes(args) -> int:
    import xxhash
    from deadline.job_attachments._aws.aws_clients import get_s3_client

    s3 = get_s3_client()
    res = s3.get_object(Bucket=args.bucket, Key=args.key)
    body = res["Body"].read()
    Path(args.output).write_bytes(body)
    print(json.dumps({
        "key": args.key,
        "size": len(body),
        "etag": res.get("ETag"),
        "metadata": res.get("Metadata", {}),
        "content_type": res.get("ContentType"),
        "xxh128": xxhash.xxh3_128_hexdigest(body),
    }))
    return 0


def cmd_ls(args) -> int:
    from deadline.job_attachments._aws.aws_clients import get_s3_client

    s3 = get_s3_client()
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=args.bucket, Prefix=args.prefix):
        for obj in page.get("Contents", []):
            row = {"key": obj["Key"], "size": obj["Size"]}
            if args.metadata:
                head = s3.head_object(Bucket=args.bucket, Key=obj["Key"])
                row["metadata"] = head.get("Metadata", {})
            print(json.dumps(row, ensure_ascii=False))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="official.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    def queue_args(p):
        p.add_argument("--bucket", required=True)
        p.add_argument("--root-prefix", required=True)
        p.add_argument("--farm-id", required=True)
        p.add_argument("--queue-id", required=True)

    up = sub.add_parser("upload", help="hash and upload inputs as a submitter does")
    queue_args(up)
    up.add_argument("--output-dir", action="append", default=[], help="job output directory (repeatable)")
    up.add_argument("--hash-cache-dir", help="client hash cache dir (default: fresh temp dir)")
    up.add_argument("--s3-check-cache-dir", help="client S3 check cache dir (default: fresh temp dir)")
    up.add_argument("-o", "--output", help="write the attachments JSON here (default stdout)")
    up.add_argument("--allow-missing", action="store_true",
                    help="a missing input is referenced, as the client's default (require_paths_exist=False)")
    up.add_argument("--asset-references", metavar="BUNDLE_DIR",
                    help="also take a job bundle's asset_references.json/.yaml and its template's "
                         "PATH parameters (the client's own loader)")
    up.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                    help="a value of the bundle template's job parameters, as `deadline bundle "
                         "submit -p` (repeatable)")
    up.add_argument("inputs", nargs="*", metavar="INPUT")
    up.set_defaults(func=cmd_upload)

    dl = sub.add_parser("download", help="materialize a job's inputs as a worker does")
    queue_args(dl)
    dl.add_argument("--attachments", required=True, help="attachments JSON (as written by upload)")
    dl.add_argument("--dest", required=True, help="session directory")
    dl.add_argument("--job-id", default="job-" + "0" * 32)
    dl.add_argument("--step-dependency", action="append", default=[],
                    help="also sync this step's outputs (repeatable; needs the real --job-id)")
    dl.add_argument("-o", "--output", help="write the path-mapping rules here (default stdout)")
    dl.set_defaults(func=cmd_download)

    tk = sub.add_parser("task", help="a worker's task: sync inputs, render, sync outputs")
    queue_args(tk)
    tk.add_argument("--attachments", required=True, help="attachments JSON (as written by upload)")
    tk.add_argument("--dest", required=True, help="session directory")
    tk.add_argument("--job-id", required=True)
    tk.add_argument("--step-id", required=True)
    tk.add_argument("--task-id", required=True)
    tk.add_argument("--session-action-id", required=True)
    tk.add_argument("--step-dependency", action="append", default=[],
                    help="also sync this step's outputs (repeatable)")
    tk.add_argument("--render", action="append", default=[], metavar="REL=SRC",
                    help="copy SRC (with its mtime) to REL under the first root (repeatable)")
    tk.set_defaults(func=cmd_task)

    mb = sub.add_parser("manifest-bytes", help="fetch one object's exact bytes")
    mb.add_argument("--bucket", required=True)
    mb.add_argument("--key", required=True)
    mb.add_argument("-o", "--output", required=True)
    mb.set_defaults(func=cmd_manifest_bytes)

    ls = sub.add_parser("ls", help="list keys (JSON lines)")
    ls.add_argument("--bucket", required=True)
    ls.add_argument("--prefix", default="")
    ls.add_argument("--metadata", action="store_true", help="HEAD each object for its user metadata")
    ls.set_defaults(func=cmd_ls)

    args = ap.parse_args()
    _guard_network()
    import logging

    logging.basicConfig(stream=sys.stderr, level=os.environ.get("OFFICIAL_LOG_LEVEL", "WARNING"),
                        format="official.py: %(name)s: %(levelname)s: %(message)s")
    import importlib.util

    try:
        found = importlib.util.find_spec("deadline.job_attachments") is not None
    except ImportError:  # no `deadline` package at all
        found = False
    if not found:
        die("the `deadline` package is not importable: run me with $DEADLINE_PY "
            "(source scripted_tests/lib/deadline_venv.sh)")
    _count_calls()
    _check_account_id()
    try:
        rc = args.func(args)
    finally:
        try:
            _report_calls()
        finally:
            _TMP.cleanup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
